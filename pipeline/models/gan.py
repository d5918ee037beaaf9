"""Conditional GAN networks for `train_cgan`: generators and discriminators, built from a variant's config.

Conventions shared by every network here:

* Images are single-channel floats in [0, 1]. Generators end in a sigmoid, so their output is in (0, 1) with
  no rescaling anywhere (sigmoid(2a) = (tanh(a) + 1) / 2: the same head as pix2pix's tanh on [-1, 1]); a
  mask2image generator given a silhouette channel is exactly 0 outside it.
* Generators hold no batch statistics (instance norm, SPADE on instance norm, pixel norm; never batch norm),
  so a sample depends only on its own condition and noise, not on the batch it is drawn in, and train and
  eval mode compute the same function.
* Discriminators return raw logits (no activation) plus their intermediate feature maps (for feature
  matching), and use no normalisation layer: batch norm would couple real and fake samples and make the
  per-sample R1 gradient ill-defined; spectral norm and/or R1 bound them instead (as SNGAN / StyleGAN2).
* Init: Kaiming-normal (fan-in, LeakyReLU slope 0.2) for every conv/linear weight, zero biases. DCGAN's
  normal(0, 0.02) shrinks the signal by about half per layer when no batch norm follows, which stalls the
  normalisation-free discriminators when spectral norm is off. Layers whose output starts a residual-like
  modulation (SPADE gamma/beta, noise injection) start at zero, so the network starts as its plain version;
  output layers (generator heads, discriminator logits) start at normal(0, 0.02), so a generator starts near
  0.5 rather than saturated at 0 or 1, and a discriminator near 0.

MONAI's ``PatchDiscriminator`` is not used: it only doubles one base width (``d_channels`` is a free list),
defaults to batch norm and returns the logits inside the feature list; our discriminator is the same
pix2pix layout built from MONAI ``Convolution`` blocks, so 2D and 3D come from one code path.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from monai.networks.blocks import Convolution
from monai.networks.layers.factories import Conv, Norm
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm as _spectral_norm

from pipeline.config import CganVariantConfig
from pipeline.errors import ConfigError

logger = logging.getLogger(__name__)

LEAKY_SLOPE = 0.2
_ACT = ("LEAKYRELU", {"negative_slope": LEAKY_SLOPE})

__all__ = [
    "Label2ImageGenerator",
    "Mask2ImageGenerator",
    "PatchGANDiscriminator",
    "PixelNorm",
    "ProjectionDiscriminator",
    "SPADE",
    "build_label2image_generator",
    "build_mask2image_generator",
    "build_patch_discriminator",
    "build_projection_discriminator",
    "check_size",
    "minibatch_stddev",
    "patch_logits_size",
]


# --- sizes ------------------------------------------------------------------------------------------------


def patch_logits_size(size: Sequence[int], n_layers: int) -> tuple[int, ...]:
    """Spatial size of the PatchGAN logits map for an input of ``size`` and ``n_layers`` trunk layers (all
    but the last trunk layer halve, k4 s2 p1; the last trunk layer and the head, k4 s1 p1, take 1 off)."""
    out = []
    for s in size:
        for _ in range(n_layers - 1):
            s //= 2
        out.append(s - 2)
    return tuple(out)


def check_size(size: Sequence[int], v: CganVariantConfig) -> None:
    """Raise ConfigError unless images of spatial ``size`` fit variant ``v``'s networks.

    mask2image: every dimension divisible by 2**(len(g_channels) - 1) (the U-Net's skips must line up) and
    large enough for the PatchGAN to leave a logits map of at least 1 pixel. label2image: large enough for
    the projection discriminator's len(d_channels) halvings to leave at least 1 pixel."""
    if not size or any(s < 1 for s in size):
        raise ConfigError(f"train_cgan ({v.kind}): image size must be positive, got {tuple(size)}")
    if v.kind == "mask2image":
        factor = 2 ** (len(v.g_channels) - 1)
        if any(s % factor for s in size):
            raise ConfigError(
                f"train_cgan (mask2image): image size {tuple(size)} must be divisible by "
                f"2**(len(g_channels) - 1) = {factor} (g_channels has {len(v.g_channels)} levels)"
            )
        if min(patch_logits_size(size, len(v.d_channels))) < 1:
            raise ConfigError(
                f"train_cgan (mask2image): image size {tuple(size)} is too small for a PatchGAN with "
                f"{len(v.d_channels)} layers (d_channels); use fewer layers or larger images"
            )
    else:
        factor = 2 ** len(v.d_channels)
        if min(size) < factor:
            raise ConfigError(
                f"train_cgan (label2image): image size {tuple(size)} is smaller than 2**len(d_channels) = "
                f"{factor}, which the projection discriminator needs"
            )


# --- shared helpers ---------------------------------------------------------------------------------------


def _init_weights(module: nn.Module) -> None:
    """Kaiming-normal (fan-in, LeakyReLU 0.2) conv/linear weights, zero biases; see the module docstring."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d | nn.Conv3d | nn.ConvTranspose2d | nn.ConvTranspose3d | nn.Linear):
            nn.init.kaiming_normal_(m.weight, a=LEAKY_SLOPE, nonlinearity="leaky_relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def _init_output(layer: nn.Module) -> None:
    """Output layers (generator heads before the sigmoid, discriminator logits): normal(0, 0.02), zero bias,
    so generators start near 0.5 (not saturated) and discriminators near 0."""
    nn.init.normal_(layer.weight, 0.0, 0.02)
    if getattr(layer, "bias", None) is not None:
        nn.init.zeros_(layer.bias)


def _add_spectral_norm(module: nn.Module) -> nn.Module:
    """Spectral-normalise every conv, linear and embedding weight of ``module`` (Miyato et al. 2018).

    The parametrisation runs one power iteration per training-mode forward; its vectors start from the
    global RNG, so a seeded run is reproducible."""
    targets = [m for m in module.modules() if isinstance(m, nn.Conv2d | nn.Conv3d | nn.Linear | nn.Embedding)]
    for m in targets:
        _spectral_norm(m)
    return module


def _n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


class PixelNorm(nn.Module):
    """Normalise each pixel's feature vector to unit RMS (Karras et al. 2018): (B, C, *S) → (B, C, *S).
    No batch or spatial statistics, so it suits a generator that starts from a vector."""

    def __init__(self, eps: float = 1e-8) -> None:
        super().__init__()
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.pow(2).mean(dim=1, keepdim=True) + self.eps)


def _resize_to(cond: torch.Tensor, spatial: Sequence[int]) -> torch.Tensor:
    """Resize conditioning maps (B, C, *S) to ``spatial`` by area averaging: a lesion smaller than the
    target cell survives as a fraction instead of vanishing as it would under nearest-neighbour."""
    if tuple(cond.shape[2:]) == tuple(spatial):
        return cond
    return F.interpolate(cond, size=tuple(spatial), mode="area")


class SPADE(nn.Module):
    """Spatially-adaptive normalisation (Park et al. 2019): instance norm without affine, then a per-pixel
    scale and shift predicted from the conditioning maps resized to the features.

    forward(h (B, C, *S), cond (B, Cc, *S')) → (B, C, *S); out = norm(h) * (1 + gamma) + beta. The hidden
    width is capped at 32 (the paper uses 128 on 35-class label maps; ours are a few binary masks) and gamma
    and beta come from one conv, which keeps SPADE below the cost of the decoder convs on a CPU."""

    def __init__(self, channels: int, cond_channels: int, spatial_dims: int = 2, hidden: int = 32) -> None:
        super().__init__()
        conv = Conv[Conv.CONV, spatial_dims]
        hidden = min(hidden, channels)
        self.channels = channels
        self.norm = Norm[Norm.INSTANCE, spatial_dims](channels, affine=False)
        self.shared = nn.Sequential(conv(cond_channels, hidden, 3, padding=1), nn.ReLU())
        self.gamma_beta = conv(hidden, 2 * channels, 3, padding=1)
        _init_weights(self)
        nn.init.zeros_(self.gamma_beta.weight)  # start as a plain (unit-scale, zero-shift) instance norm
        nn.init.zeros_(self.gamma_beta.bias)

    def forward(self, h: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        gamma, beta = self.gamma_beta(self.shared(_resize_to(cond.to(h.dtype), h.shape[2:]))).chunk(2, dim=1)
        return self.norm(h) * (1 + gamma) + beta


class _InstanceNorm(nn.Module):
    """Affine instance norm with the SPADE call signature (the conditioning is ignored)."""

    def __init__(self, channels: int, spatial_dims: int) -> None:
        super().__init__()
        self.norm = Norm[Norm.INSTANCE, spatial_dims](channels, affine=True)

    def forward(self, h: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        return self.norm(h)


# --- mask → image -----------------------------------------------------------------------------------------


class _DecoderLevel(nn.Module):
    """×2 nearest upsampling + 3³ conv (no transposed-conv checkerboard, Odena et al. 2016), noise
    injection, norm, then concatenation with the encoder skip and a 3³ conv, norm."""

    def __init__(
        self, c_in: int, c_out: int, cond_channels: int, noise_channels: int, spade: bool, spatial_dims: int
    ) -> None:
        super().__init__()
        conv = Conv[Conv.CONV, spatial_dims]
        self.up = nn.Upsample(scale_factor=2, mode="nearest")
        self.conv1 = conv(c_in, c_out, 3, padding=1)
        self.conv2 = conv(2 * c_out, c_out, 3, padding=1)

        def norm(c: int) -> nn.Module:
            return SPADE(c, cond_channels, spatial_dims) if spade else _InstanceNorm(c, spatial_dims)

        self.norm1, self.norm2 = norm(c_out), norm(c_out)
        self.act = nn.LeakyReLU(LEAKY_SLOPE)
        # Learned per-channel map of the noise into the features (StyleGAN-style injection, generalised to
        # several noise maps): with only input noise a pix2pix generator learns to ignore it under L1.
        self.noise = conv(noise_channels, c_out, 1) if noise_channels > 0 else None

    def forward(
        self, h: torch.Tensor, skip: torch.Tensor, cond: torch.Tensor, noise: torch.Tensor | None
    ) -> torch.Tensor:
        h = self.conv1(self.up(h))
        if self.noise is not None and noise is not None:
            h = h + self.noise(_subsample(noise, h.shape[2:]))
        h = self.act(self.norm1(h, cond))
        h = self.conv2(torch.cat([h, skip], dim=1))
        return self.act(self.norm2(h, cond))


def _subsample(noise: torch.Tensor, spatial: Sequence[int]) -> torch.Tensor:
    """Strided subsampling of noise maps (B, C, *S) to ``spatial`` (S divisible by it): keeps N(0, 1)
    per element, where averaging would shrink the variance."""
    steps = [s // t for s, t in zip(noise.shape[2:], spatial, strict=True)]
    return noise[(slice(None), slice(None), *(slice(None, None, k) for k in steps))]


class Mask2ImageGenerator(nn.Module):
    """U-Net generator: conditioning maps + noise maps → image in (0, 1).

    forward(cond (B, C, *S), noise (B, noise_channels, *S) or None when noise_channels is 0) → (B, 1, *S),
    S divisible by 2**(len(channels) - 1). The noise is concatenated to the input and also injected into
    every decoder level, so one mask gives many images.

    With ``silhouette_channel`` k the output is multiplied by conditioning channel k, a binary silhouette
    outside which the data are black (train_cgan's head mask). Otherwise the generator spends its first few
    hundred steps learning to draw a black background: measured on the demo, its background stayed at about
    0.45 for 8 of the 24 epochs while the interior went dark (those steps are now left for the inside of
    the head: best val SWD 0.054 → 0.047 at the same 24 epochs)."""

    def __init__(
        self,
        cond_channels: int,
        noise_channels: int,
        channels: Sequence[int],
        spade: bool,
        spatial_dims: int = 2,
        silhouette_channel: int | None = None,
    ) -> None:
        super().__init__()
        if spatial_dims not in (2, 3):
            raise ConfigError(f"train_cgan (mask2image): spatial_dims must be 2 or 3, got {spatial_dims}")
        if cond_channels < 1:
            raise ConfigError(
                f"train_cgan (mask2image): needs at least 1 conditioning channel, got {cond_channels}"
            )
        if silhouette_channel is not None and not 0 <= silhouette_channel < cond_channels:
            raise ConfigError(
                f"train_cgan (mask2image): silhouette channel {silhouette_channel} is not one of the "
                f"{cond_channels} conditioning channels"
            )
        self.cond_channels, self.noise_channels = cond_channels, noise_channels
        self.channels, self.spatial_dims = tuple(channels), spatial_dims
        self.silhouette_channel = silhouette_channel
        self.factor = 2 ** (len(channels) - 1)

        def block(c_in: int, c_out: int, stride: int) -> Convolution:
            return Convolution(
                spatial_dims,
                c_in,
                c_out,
                strides=stride,
                kernel_size=3,
                act=_ACT,
                norm=("INSTANCE", {"affine": True}),
            )

        self.encoder = nn.ModuleList()
        c_prev = cond_channels + noise_channels
        for i, c in enumerate(channels):
            self.encoder.append(nn.Sequential(block(c_prev, c, 1 if i == 0 else 2), block(c, c, 1)))
            c_prev = c
        self.decoder = nn.ModuleList(
            _DecoderLevel(channels[i + 1], channels[i], cond_channels, noise_channels, spade, spatial_dims)
            for i in reversed(range(len(channels) - 1))
        )
        self.head = Conv[Conv.CONV, spatial_dims](channels[0], 1, 1)
        _init_weights(self)
        _init_output(self.head)
        for level in self.decoder:
            if level.noise is not None:
                nn.init.zeros_(level.noise.weight)
                nn.init.zeros_(level.noise.bias)

    def forward(self, cond: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        spatial = tuple(cond.shape[2:])
        if len(spatial) != self.spatial_dims or cond.shape[1] != self.cond_channels:
            raise ValueError(
                f"cond must be (B, {self.cond_channels}, <{self.spatial_dims} spatial sizes>), "
                f"got {tuple(cond.shape)}"
            )
        if any(s % self.factor for s in spatial):
            raise ConfigError(
                f"train_cgan (mask2image): image size {spatial} must be divisible by {self.factor} "
                f"(2**(len(g_channels) - 1))"
            )
        if self.noise_channels > 0:
            expected = (cond.shape[0], self.noise_channels, *spatial)
            if noise is None or tuple(noise.shape) != expected:
                got = None if noise is None else tuple(noise.shape)
                raise ValueError(f"noise must have shape {expected}, got {got}")
            h = torch.cat([cond, noise.to(cond.dtype)], dim=1)
        else:
            noise, h = None, cond
        skips = []
        for level in self.encoder:
            h = level(h)
            skips.append(h)
        for level, skip in zip(self.decoder, reversed(skips[:-1]), strict=True):
            h = level(h, skip, cond, noise)
        out = torch.sigmoid(self.head(h))
        if self.silhouette_channel is not None:
            k = self.silhouette_channel
            out = out * cond[:, k : k + 1].to(out.dtype)
        return out


def build_mask2image_generator(
    v: CganVariantConfig, in_channels: int, spatial_dims: int = 2, silhouette_channel: int | None = None
) -> nn.Module:
    """U-Net generator from ``v.g_channels`` (one entry per resolution level), ``v.noise_channels`` and
    ``v.spade``: forward(cond (B, in_channels, *S), noise (B, noise_channels, *S)) → (B, 1, *S) in [0, 1),
    zero outside conditioning channel ``silhouette_channel`` when given."""
    net = Mask2ImageGenerator(
        in_channels, v.noise_channels, v.g_channels, v.spade, spatial_dims, silhouette_channel
    )
    logger.debug("mask2image generator: %d parameters", _n_params(net))
    return net


# --- label → image ----------------------------------------------------------------------------------------


class Label2ImageGenerator(nn.Module):
    """DCGAN-style generator: noise vector + class label → image in (0, 1).

    forward(z (B, latent_dim), y (B,) int64 in [0, n_classes)) → (B, 1, H, W). The label's embedding is
    concatenated to z; a linear layer makes a (channels[0], h0, w0) map with h0 = ceil(H / 2**k),
    k = len(channels) - 1; k stride-2 transposed convs (k4 s2 p1, exact doubling) reach h0·2**k ≥ H, and the
    result is centre-cropped to (H, W) (never resized, so no interpolation blur). Pixel norm after every
    layer; no batch statistics."""

    def __init__(
        self, latent_dim: int, n_classes: int, channels: Sequence[int], out_size: tuple[int, int]
    ) -> None:
        super().__init__()
        if n_classes < 1:
            raise ConfigError(f"train_cgan (label2image): n_classes must be >= 1, got {n_classes}")
        if len(out_size) != 2 or min(out_size) < 1:
            raise ConfigError(f"train_cgan (label2image): out_size must be two positive ints, got {out_size}")
        self.latent_dim, self.n_classes, self.out_size = latent_dim, n_classes, tuple(out_size)
        k = len(channels) - 1
        self.start = tuple(math.ceil(s / 2**k) for s in out_size)
        self.embed = nn.Embedding(n_classes, latent_dim)
        self.fc = nn.Linear(2 * latent_dim, channels[0] * self.start[0] * self.start[1])
        self.channels0 = channels[0]
        layers: list[nn.Module] = []
        for c_in, c_out in zip(channels[:-1], channels[1:], strict=True):
            layers += [
                nn.ConvTranspose2d(c_in, c_out, 4, stride=2, padding=1),
                nn.LeakyReLU(LEAKY_SLOPE),
                PixelNorm(),
            ]
        self.up = nn.Sequential(*layers)
        self.head = nn.Conv2d(channels[-1], 1, 3, padding=1)
        self.act, self.pixnorm = nn.LeakyReLU(LEAKY_SLOPE), PixelNorm()
        _init_weights(self)
        _init_output(self.head)
        nn.init.normal_(self.embed.weight, 0.0, 1.0)  # same scale as z, so the label is not drowned out

    def forward(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if z.ndim != 2 or z.shape[1] != self.latent_dim:
            raise ValueError(f"z must be (B, {self.latent_dim}), got {tuple(z.shape)}")
        h = self.fc(torch.cat([z, self.embed(y.long()).to(z.dtype)], dim=1))
        h = self.pixnorm(self.act(h.view(z.shape[0], self.channels0, *self.start)))
        h = self.head(self.up(h))
        top = (h.shape[2] - self.out_size[0]) // 2
        left = (h.shape[3] - self.out_size[1]) // 2
        h = h[:, :, top : top + self.out_size[0], left : left + self.out_size[1]]
        return torch.sigmoid(h)


def build_label2image_generator(v: CganVariantConfig, n_classes: int, out_size: tuple[int, int]) -> nn.Module:
    """DCGAN generator from ``v.latent_dim`` and ``v.g_channels`` (start width first):
    forward(z (B, latent_dim), y (B,)) → (B, 1, *out_size) in (0, 1)."""
    net = Label2ImageGenerator(v.latent_dim, n_classes, v.g_channels, out_size)
    logger.debug("label2image generator: %d parameters, start map %s", _n_params(net), net.start)
    return net


# --- discriminators ---------------------------------------------------------------------------------------


class PatchGANDiscriminator(nn.Module):
    """pix2pix PatchGAN on image + conditioning maps concatenated on channels.

    Trunk: one k4 conv per ``channels`` entry with LeakyReLU 0.2, stride 2 except the last (stride 1), then a
    k4 s1 conv to one logit per patch. With three entries the receptive field is 34 px (pix2pix's 70 px
    scaled to 32–128 px slices); each entry more doubles it roughly.

    forward(x (B, in_channels, *S)) → (logits (B, 1, *s), [trunk feature maps]); s = patch_logits_size(S)."""

    def __init__(
        self, in_channels: int, channels: Sequence[int], spectral_norm: bool, spatial_dims: int = 2
    ) -> None:
        super().__init__()
        if spatial_dims not in (2, 3):
            raise ConfigError(f"train_cgan (mask2image): spatial_dims must be 2 or 3, got {spatial_dims}")
        self.trunk = nn.ModuleList()
        c_prev = in_channels
        for i, c in enumerate(channels):
            stride = 1 if i == len(channels) - 1 else 2
            self.trunk.append(
                Convolution(
                    spatial_dims, c_prev, c, strides=stride, kernel_size=4, padding=1, act=_ACT, norm=None
                )
            )
            c_prev = c
        self.head = Conv[Conv.CONV, spatial_dims](c_prev, 1, 4, padding=1)
        _init_weights(self)
        _init_output(self.head)
        if spectral_norm:
            _add_spectral_norm(self)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        feats = []
        h = x
        for layer in self.trunk:
            h = layer(h)
            feats.append(h)
        return self.head(h), feats


def build_patch_discriminator(
    v: CganVariantConfig, in_channels: int, spectral_norm: bool, spatial_dims: int = 2
) -> nn.Module:
    """PatchGAN from ``v.d_channels``; ``in_channels`` = 1 (image) + conditioning channels.
    forward(cat([image, cond], 1)) → (logits (B, 1, h, w), features)."""
    net = PatchGANDiscriminator(in_channels, v.d_channels, spectral_norm, spatial_dims)
    logger.debug("patch discriminator: %d parameters, spectral_norm=%s", _n_params(net), spectral_norm)
    return net


def minibatch_stddev(h: torch.Tensor, group: int = 4) -> torch.Tensor:
    """Append one channel holding, per group of ``group`` samples, the mean over features of the standard
    deviation across the group (Karras et al. 2018): (B, C, *S) → (B, C + 1, *S).

    It lets the discriminator see how varied a batch is, so a generator that ignores its noise (one image
    per label) is caught. The group is the largest divisor of B not above ``group``, so any batch works."""
    batch = h.shape[0]
    g = max(d for d in range(1, min(group, batch) + 1) if batch % d == 0)
    y = h.float().reshape(g, batch // g, *h.shape[1:])
    y = (y - y.mean(dim=0)).pow(2).mean(dim=0).add(1e-8).sqrt()
    y = y.mean(dim=tuple(range(1, y.ndim)))  # (B / g,)
    y = y.repeat(g).reshape(batch, 1, *[1] * (h.ndim - 2)).expand(batch, 1, *h.shape[2:])
    return torch.cat([h, y.to(h.dtype)], dim=1)


class ProjectionDiscriminator(nn.Module):
    """Class-conditional discriminator with a projection head (Miyato & Koyama 2018).

    Trunk: one k4 s2 conv + LeakyReLU 0.2 per ``channels`` entry; then the minibatch standard deviation
    channel and a 3×3 conv + LeakyReLU back to the last width; h = global sum pooling;
    logit = w·h + b + <embed(y), h>. Measured on the demo phantom: without the stddev channel the generator
    drew one image per label whatever the noise, with every loss and learning rate tried.

    forward(x (B, 1, H, W), y (B,) int64) → (logits (B,), [trunk feature maps])."""

    def __init__(
        self, n_classes: int, channels: Sequence[int], spectral_norm: bool, in_channels: int = 1
    ) -> None:
        super().__init__()
        if n_classes < 1:
            raise ConfigError(f"train_cgan (label2image): n_classes must be >= 1, got {n_classes}")
        self.trunk = nn.ModuleList()
        c_prev = in_channels
        for c in channels:
            self.trunk.append(
                Convolution(2, c_prev, c, strides=2, kernel_size=4, padding=1, act=_ACT, norm=None)
            )
            c_prev = c
        self.mbstd = nn.Sequential(nn.Conv2d(c_prev + 1, c_prev, 3, padding=1), nn.LeakyReLU(LEAKY_SLOPE))
        self.linear = nn.Linear(c_prev, 1)
        self.embed = nn.Embedding(n_classes, c_prev)
        _init_weights(self)
        _init_output(self.linear)
        _init_output(self.embed)
        if spectral_norm:
            _add_spectral_norm(self)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        feats = []
        h = x
        for layer in self.trunk:
            h = layer(h)
            feats.append(h)
        h = self.mbstd(minibatch_stddev(h))
        pooled = h.sum(dim=(2, 3))
        logits = self.linear(pooled).squeeze(1) + (self.embed(y.long()).to(pooled.dtype) * pooled).sum(dim=1)
        return logits, feats


def build_projection_discriminator(v: CganVariantConfig, n_classes: int, spectral_norm: bool) -> nn.Module:
    """Projection discriminator from ``v.d_channels``: forward(x (B, 1, H, W), y (B,)) → (logits (B,),
    features); H, W ≥ 2**len(d_channels)."""
    net = ProjectionDiscriminator(n_classes, v.d_channels, spectral_norm)
    logger.debug("projection discriminator: %d parameters, spectral_norm=%s", _n_params(net), spectral_norm)
    return net
