"""Typed configuration: one frozen, typed record per `params.yaml` section.

They are frozen pydantic models rather than stdlib dataclasses because pydantic already does what we
need (strict types, nested sections, unknown keys forbidden, error locations), so a missing, unknown or
ill-typed key fails with a message that names the section and the key.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from pipeline.errors import ConfigError


class Section(BaseModel):
    """Base of every section: frozen, strict types (no "3" for 3), unknown keys rejected."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class CommonConfig(Section):
    """`common`: settings every stage shares."""

    seed: int
    deterministic: bool
    device: Literal["auto", "cpu", "cuda"]


class DemoDataConfig(Section):
    """`demo_data`: the deterministic brain phantom written as DICOM series and NIfTI files."""

    seed: int
    n_cases: Annotated[int, Field(ge=2)]
    n_nifti: Annotated[int, Field(ge=0)]
    n_oblique: Annotated[int, Field(ge=0)]
    lesion_fraction: Annotated[float, Field(ge=0.0, le=1.0)]
    matrix: Annotated[list[int], Field(min_length=3, max_length=3)]
    spacing: Annotated[list[float], Field(min_length=3, max_length=3)]


class GeometryConfig(Section):
    """Geometry checks applied to every series/volume before it is accepted."""

    min_slices: Annotated[int, Field(ge=1)]
    spacing_rtol: Annotated[float, Field(ge=0.0)]
    orientation_atol: Annotated[float, Field(ge=0.0)]
    max_tilt_deg: Annotated[float, Field(ge=0.0)]


class IntensityConfig(Section):
    """Per-modality normalisation. ``mr`` maps percentiles (or z-score) of the foreground; ``ct`` a window."""

    mr: Literal["percentile", "zscore"]
    mr_percentiles: Annotated[list[float], Field(min_length=2, max_length=2)]
    ct_window: Annotated[list[float], Field(min_length=2, max_length=2)]
    other: Literal["percentile", "zscore"]


class SplitConfig(Section):
    seed: int
    train: Annotated[float, Field(gt=0.0, lt=1.0)]
    val: Annotated[float, Field(ge=0.0, lt=1.0)]


class PreprocessConfig(Section):
    """`preprocess`: validate → orient → resample → normalise → split by patient."""

    data_root: str
    cases_csv: str
    mask_series_pattern: str
    mask_file_suffixes: list[str]
    default_modality: str
    geometry: GeometryConfig
    target_spacing: Annotated[list[float], Field(min_length=3, max_length=3)]
    slice_size: Annotated[list[int], Field(min_length=2, max_length=2)]
    intensity: IntensityConfig
    split: SplitConfig
    min_lesion_voxels: Annotated[int, Field(ge=1)]
    max_rejected_fraction: Annotated[float, Field(ge=0.0, le=1.0)]
    pseudonym_salt: str
    workers: Annotated[int, Field(ge=0)]
    max_read_mib: Annotated[int, Field(ge=1)]


class AugmentConfig(Section):
    """Seeded MONAI augmentation of training slices (probabilities per sample)."""

    flip_prob: Annotated[float, Field(ge=0.0, le=1.0)]
    rotate_deg: Annotated[float, Field(ge=0.0, le=180.0)]
    scale: Annotated[float, Field(ge=0.0, lt=1.0)]
    affine_prob: Annotated[float, Field(ge=0.0, le=1.0)]
    intensity_scale: Annotated[float, Field(ge=0.0, lt=1.0)]
    noise_std: Annotated[float, Field(ge=0.0)]


class TrainLoopConfig(Section):
    """What every training stage shares with the engine."""

    epochs: Annotated[int, Field(ge=1)]
    batch_size: Annotated[int, Field(ge=1)]
    lr: Annotated[float, Field(gt=0.0)]
    weight_decay: Annotated[float, Field(ge=0.0)]
    checkpoint_every: Annotated[int, Field(ge=1)]
    max_steps_per_epoch: Annotated[int, Field(ge=0)]
    num_workers: Annotated[int, Field(ge=0)]
    precision: Literal["bf16", "fp32"]


class TrainSegConfig(Section):
    """`train_seg`: MONAI U-Net, image → lesion mask, DiceCE loss."""

    spatial_dims: Literal[2, 3]
    channels: Annotated[list[int], Field(min_length=2)]
    strides: Annotated[list[int], Field(min_length=1)]
    num_res_units: Annotated[int, Field(ge=0)]
    dropout: Annotated[float, Field(ge=0.0, lt=1.0)]
    patch_size: Annotated[list[int], Field(min_length=3, max_length=3)]
    min_foreground: Annotated[float, Field(ge=0.0, le=1.0)]
    abnormal_fraction: Annotated[float, Field(ge=0.0, lt=1.0)]
    train: TrainLoopConfig
    augment: AugmentConfig


class TrainAeConfig(Section):
    """`train_ae`: denoising autoencoder with a real bottleneck, trained on normal slices only."""

    channels: Annotated[list[int], Field(min_length=2)]
    strides: Annotated[list[int], Field(min_length=1)]
    bottleneck_channels: Annotated[int, Field(ge=1)]
    num_res_units: Annotated[int, Field(ge=0)]
    corruption: Literal["coarse_noise", "masking", "none"]
    noise_std: Annotated[float, Field(ge=0.0)]
    noise_resolution: Annotated[int, Field(ge=1)]
    mask_ratio: Annotated[float, Field(ge=0.0, lt=1.0)]
    mask_patch: Annotated[int, Field(ge=1)]
    loss: Literal["l1", "l2"]
    min_foreground: Annotated[float, Field(ge=0.0, le=1.0)]
    train: TrainLoopConfig
    augment: AugmentConfig


class ScoreAnomaliesConfig(Section):
    """`score_anomalies`: reconstruction error maps, scores, calibrated threshold, AUROC/AUPRC."""

    foreground_threshold: Annotated[float, Field(ge=0.0)]
    foreground_erosion: Annotated[int, Field(ge=0)]
    error: Literal["abs", "squared"]
    smooth_sigma: Annotated[float, Field(ge=0.0)]
    slice_score: Literal["max", "mean", "top_fraction"]
    top_fraction: Annotated[float, Field(gt=0.0, le=1.0)]
    threshold_quantile: Annotated[float, Field(gt=0.0, lt=1.0)]
    max_pixels: Annotated[int, Field(ge=1000)]
    batch_size: Annotated[int, Field(ge=1)]
    n_overlays: Annotated[int, Field(ge=0)]


class CganVariantConfig(Section):
    """One conditional GAN variant (`train_cgan.variants.<name>`)."""

    kind: Literal["mask2image", "label2image"]
    g_channels: Annotated[
        list[int], Field(min_length=2)
    ]  # mask2image: U-Net levels; label2image: deconv widths
    d_channels: Annotated[list[int], Field(min_length=2)]
    noise_channels: Annotated[int, Field(ge=0)]  # mask2image: noise maps fed beside the mask
    latent_dim: Annotated[int, Field(ge=1)]  # label2image: noise vector size
    spade: bool  # mask2image: SPADE-style normalisation modulated by the mask
    l1_weight: Annotated[float, Field(ge=0.0)]  # mask2image: pixel reconstruction term
    feature_matching_weight: Annotated[float, Field(ge=0.0)]
    mode_seeking_weight: Annotated[float, Field(ge=0.0)]  # MSGAN: penalise outputs that ignore the noise
    # 2D: repeat abnormal training slices to about this share of an epoch (0 = as they come); 3D patches
    # are lesion-centred half the time instead
    abnormal_fraction: Annotated[float, Field(ge=0.0, lt=1.0)]


class TrainCganConfig(Section):
    """`train_cgan`: conditional GANs (DVC foreach over ``variants``), stable on small data."""

    variants: dict[str, CganVariantConfig]
    spatial_dims: Literal[2, 3]  # 3: mask2image on random volume patches of patch_size
    patch_size: Annotated[list[int], Field(min_length=3, max_length=3)]  # 3D only
    loss: Literal["hinge", "non_saturating", "least_squares"]
    spectral_norm: bool
    r1_gamma: Annotated[float, Field(ge=0.0)]
    r1_every: Annotated[int, Field(ge=1)]
    diffaugment: Annotated[
        list[Literal["translation", "cutout", "brightness", "contrast"]], Field(max_length=4)
    ]
    ada_target: Annotated[float, Field(ge=0.0, le=1.0)]  # 0 = fixed augmentation probability ada_p_init
    ada_p_init: Annotated[float, Field(ge=0.0, le=1.0)]
    ada_speed: Annotated[float, Field(ge=0.0)]  # change of p per discriminator step
    ema_decay: Annotated[float, Field(ge=0.0, lt=1.0)]
    lr_d: Annotated[float, Field(gt=0.0)]  # the generator's is train.lr
    betas: Annotated[list[float], Field(min_length=2, max_length=2)]
    min_foreground: Annotated[float, Field(ge=0.0, le=1.0)]
    n_preview: Annotated[int, Field(ge=1)]
    swd_samples: Annotated[int, Field(ge=8)]
    train: TrainLoopConfig


class ExportMasksConfig(Section):
    """`export.masks`: where mask2image samples get their conditioning masks."""

    new_fraction: Annotated[float, Field(ge=0.0, le=1.0)]  # share conditioned on a deformed training mask
    rotate_deg: Annotated[float, Field(ge=0.0)]
    scale: Annotated[float, Field(ge=0.0, lt=1.0)]
    elastic_magnitude: Annotated[list[float], Field(min_length=2, max_length=2)]  # pixels, [low, high]
    elastic_spacing: Annotated[int, Field(ge=4)]  # control-grid spacing, pixels
    lesion_probability: Annotated[float, Field(ge=0.0, le=1.0)]  # chance a deformed mask gains a lesion
    lesion_radius: Annotated[list[float], Field(min_length=2, max_length=2)]  # pixels, [low, high]


class ExportMemorisationConfig(Section):
    """`export.memorisation`: the gate against samples that copy a training image."""

    percentile: Annotated[float, Field(gt=0.0, le=100.0)]  # of held-out real images' nearest-train similarity
    action: Literal["drop", "fail"]
    max_flagged_fraction: Annotated[float, Field(ge=0.0, le=1.0)]  # with "drop": fail above this share
    detail_sigma: Annotated[float, Field(gt=0.0)]  # pixels: detail = image - Gaussian blur
    interior_erosion: Annotated[int, Field(ge=0)]  # pixels taken off the head outline before comparing
    lesion_margin: Annotated[int, Field(ge=0)]  # pixels around a conditioning lesion left out


class ExportConfig(Section):
    """`export`: synthetic datasets per cGAN variant (DVC foreach over ``train_cgan.variants``)."""

    n_samples: Annotated[int, Field(ge=1)]
    seed: int
    abnormal_fraction: Annotated[float, Field(ge=0.0, le=1.0)]  # label2image: share of abnormal labels
    # label2image has no conditioning mask: "segmenter" gives each sample the train_seg U-Net's lesion mask
    # (written and marked as an automatic segmentation), "none" exports images without masks
    label2image_masks: Literal["segmenter", "none"]
    min_foreground: Annotated[float, Field(ge=0.0, le=1.0)]  # training slices usable as conditions
    masks: ExportMasksConfig
    memorisation: ExportMemorisationConfig
    compress: bool  # .nii.gz rather than .nii
    dicom: bool  # also write DICOM (image + SEG)
    source_licence: str  # licence of the data the generator was trained on, for the dataset card


class EvaluateUtilityConfig(Section):
    """`evaluate.utility`: train on synthetic, test on real (the train_seg recipe, shorter)."""

    real_cases: Annotated[int, Field(ge=1)]  # training-split cases in the small real subset
    seeds: Annotated[list[int], Field(min_length=1)]  # one U-Net per arm and seed
    epochs: Annotated[int, Field(ge=1)]
    steps_per_epoch: Annotated[int, Field(ge=1)]  # every arm trains for epochs x steps_per_epoch batches
    batch_size: Annotated[int, Field(ge=1)]


class EvaluateConfig(Section):
    """`evaluate`: fidelity, diversity, privacy and usefulness of each export (DVC foreach over variants)."""

    seed: int
    min_foreground: Annotated[float, Field(ge=0.0, le=1.0)]  # real slices compared: as the generators saw
    max_real: Annotated[int, Field(ge=8)]  # at most this many real slices per set in the distances
    kid_subsets: Annotated[int, Field(ge=1)]
    kid_subset_size: Annotated[int, Field(ge=2)]
    pr_k: Annotated[int, Field(ge=1)]  # k of the k-NN manifolds (precision / recall)
    ms_ssim_pairs: Annotated[int, Field(ge=1)]
    swd_projections: Annotated[int, Field(ge=1)]
    n_grid: Annotated[int, Field(ge=1)]  # synthetic and real slices shown side by side
    utility: EvaluateUtilityConfig


SECTIONS: dict[str, type[Section]] = {
    "common": CommonConfig,
    "demo_data": DemoDataConfig,
    "preprocess": PreprocessConfig,
    "train_seg": TrainSegConfig,
    "train_ae": TrainAeConfig,
    "score_anomalies": ScoreAnomaliesConfig,
    "train_cgan": TrainCganConfig,
    "export": ExportConfig,
    "evaluate": EvaluateConfig,
}

T = TypeVar("T", bound=Section)


def _describe(err: ValidationError, section: str) -> str:
    lines = []
    for e in err.errors():
        loc = ".".join(str(p) for p in (section, *e["loc"]))
        kind = e["type"]
        if kind == "missing":
            lines.append(f"{loc}: missing key")
        elif kind in ("unexpected_keyword_argument", "extra_forbidden"):
            lines.append(f"{loc}: unknown key")
        else:
            lines.append(f"{loc}: {e['msg']} (got {e.get('input')!r})")
    return "; ".join(lines)


def parse_section(params: dict[str, Any], section: str, cls: type[T] | None = None) -> T:
    """Build the typed config of ``section`` from the parsed params mapping, or raise ConfigError."""
    cls = cls or SECTIONS.get(section)  # type: ignore[assignment]
    if cls is None:
        raise ConfigError(f"params: unknown section {section!r}")
    if section not in params:
        raise ConfigError(f"params: missing section {section!r}")
    raw = params[section]
    if not isinstance(raw, dict):
        raise ConfigError(f"params: section {section!r} must be a mapping, got {type(raw).__name__}")
    try:
        return cls.model_validate(raw)  # type: ignore[return-value]
    except ValidationError as err:
        raise ConfigError(f"params.yaml: {_describe(err, section)}") from None


def load_params(path: Path) -> dict[str, Any]:
    """Read a params file into a mapping; a missing or malformed file is a ConfigError naming it."""
    try:
        with open(path, encoding="utf-8") as fh:
            data = yaml.safe_load(fh)
    except FileNotFoundError:
        raise ConfigError(f"{path}: params file not found") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML ({err})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping of sections")
    return data


def load_section(path: Path, section: str) -> Any:
    return parse_section(load_params(path), section)
