"""Network builders (MONAI first). Every model is built from its typed params section, so a checkpoint's
config is enough to rebuild it."""

from __future__ import annotations

from monai.networks.nets import AutoEncoder, UNet
from torch import nn

from pipeline.config import TrainAeConfig, TrainSegConfig
from pipeline.errors import ConfigError


def build_unet(cfg: TrainSegConfig, in_channels: int = 1, out_channels: int = 2) -> nn.Module:
    """MONAI residual U-Net: (B, 1, *spatial) → (B, 2, *spatial) logits (background, lesion)."""
    if len(cfg.strides) != len(cfg.channels) - 1:
        raise ConfigError(
            f"train_seg: strides needs len(channels) - 1 = {len(cfg.channels) - 1} entries, "
            f"got {len(cfg.strides)}"
        )
    return UNet(
        spatial_dims=cfg.spatial_dims,
        in_channels=in_channels,
        out_channels=out_channels,
        channels=tuple(cfg.channels),
        strides=tuple(cfg.strides),
        num_res_units=cfg.num_res_units,
        dropout=cfg.dropout,
        norm="INSTANCE",
    )


def build_autoencoder(cfg: TrainAeConfig) -> nn.Module:
    """MONAI AutoEncoder (no skip connections) whose code is ``bottleneck_channels`` feature maps at
    1/prod(strides) resolution: (B, 1, H, W) → (B, 1, H, W). Without skips the decoder cannot copy its input,
    so what it has not seen (lesions) reconstructs badly."""
    if len(cfg.strides) != len(cfg.channels):
        raise ConfigError(
            f"train_ae: strides needs len(channels) = {len(cfg.channels)} entries, got {len(cfg.strides)}"
        )
    return AutoEncoder(
        spatial_dims=2,
        in_channels=1,
        out_channels=1,
        channels=tuple(cfg.channels),
        strides=tuple(cfg.strides),
        inter_channels=(cfg.bottleneck_channels,),
        inter_dilations=(1,),
        num_res_units=cfg.num_res_units,
        norm="BATCH",  # instance norm would strip each slice's intensity level from an 8x6x6 code
    )


def bottleneck_ratio(cfg: TrainAeConfig, height: int, width: int) -> float:
    """Size of the code relative to the input (values per pixel)."""
    factor = 1
    for s in cfg.strides:
        factor *= s
    return cfg.bottleneck_channels * (height // factor) * (width // factor) / float(height * width)
