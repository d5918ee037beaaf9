"""One synthetic sample: rebuild it from its seed, and turn it into the files the export writes.

The export stage and ``medsynth regenerate`` both go through ``build_sample`` and ``sample_files``, so a
regenerated file is made by exactly the code path that made the original.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from torch import nn

from pipeline.config import ExportConfig
from pipeline.export.conditions import LABEL, Condition, choose_condition, condition_maps
from pipeline.export.dicom_writer import Provenance, dicom_files
from pipeline.export.sampling import LoadedGenerator, generate
from pipeline.io.nifti import nifti_bytes
from pipeline.preprocess.store import SliceSet
from pipeline.training.seg import predict_slices

__all__ = [
    "CONDITION_MASK",
    "SEGMENTER_MASK",
    "Sample",
    "build_sample",
    "sample_affine",
    "sample_files",
    "sample_paths",
    "segment",
]

#: Where a sample's lesion mask comes from (the manifest's ``mask_source``).
CONDITION_MASK = "condition"  # mask2image: the mask the image was generated from
SEGMENTER_MASK = "segmenter"  # label2image: the train_seg U-Net's segmentation of the generated image


@dataclass(frozen=True)
class Sample:
    sample_id: str
    index: int
    seed: int
    condition: Condition
    image: np.ndarray  # (H, W) float32 in (0, 1)
    lesion: np.ndarray | None  # (H, W) bool; None for label2image exported without masks
    lesion_added: bool
    mask_source: str = CONDITION_MASK  # CONDITION_MASK | SEGMENTER_MASK | "" (no mask)

    @property
    def label(self) -> int:
        """1 when the sample was drawn as abnormal (label2image) or carries a lesion (mask2image). A
        label2image sample keeps its drawn label whatever the segmenter finds; the export reports how often
        the two agree."""
        if self.condition.source == LABEL or self.lesion is None:
            return self.condition.label
        return int(bool(self.lesion.any()))


def sample_id(variant: str, index: int) -> str:
    """Case identifier in file names: letters, digits and underscores only (nnU-Net's rule)."""
    return f"{variant}_{index:04d}"


def build_sample(
    cfg: ExportConfig,
    gen: LoadedGenerator,
    index: int,
    seed: int,
    store: SliceSet,
    candidates: np.ndarray,
    condition: Condition | None = None,
    segmenter: nn.Module | None = None,
) -> Sample:
    """Draw sample ``index`` from ``seed``: choose (or take the given) condition, rebuild its masks, run the
    generator. ``condition`` is passed by ``regenerate`` (from the manifest), chosen here by the export.
    A label2image sample gets ``segmenter``'s lesion mask when one is given."""
    cond = condition or choose_condition(cfg, gen.v.kind, seed, store, candidates)
    if cond.source == LABEL:
        image = generate(gen, seed, label=cond.label)
        sid = sample_id(gen.variant, index)
        if segmenter is None:
            return Sample(sid, index, seed, cond, image, None, False, "")
        return Sample(sid, index, seed, cond, image, segment(segmenter, image), False, SEGMENTER_MASK)
    head, lesion, added = condition_maps(cond, cfg.masks, seed, store)
    image = generate(gen, seed, head=head, lesion=lesion)
    return Sample(sample_id(gen.variant, index), index, seed, cond, image, lesion, added)


def segment(net: nn.Module, image: np.ndarray) -> np.ndarray:
    """The lesion mask (H, W) bool ``net`` (a train_seg U-Net) predicts for one slice. One slice per call,
    like the generator, so a regenerated mask is bit-identical to the exported one."""
    return predict_slices(net, image[None], 1, next(net.parameters()).device)[0] == 1


def sample_affine(spacing: tuple[float, float, float], size: tuple[int, int]) -> np.ndarray:
    """RAS affine of a synthetic slice (i, j, 1): the preprocess target spacing, centred on the origin."""
    affine = np.diag([*spacing, 1.0]).astype(np.float64)
    affine[0, 3] = -(size[0] - 1) / 2.0 * spacing[0]
    affine[1, 3] = -(size[1] - 1) / 2.0 * spacing[1]
    return affine


def sample_paths(sid: str, compress: bool, dicom: bool, has_mask: bool) -> dict[str, str]:
    """Relative paths of a sample's files, by role: nnU-Net / Decathlon layout for NIfTI, one folder (one
    series per object) per sample for DICOM."""
    ext = ".nii.gz" if compress else ".nii"
    paths = {"image_nifti": f"imagesTr/{sid}_0000{ext}"}
    if has_mask:
        paths["mask_nifti"] = f"labelsTr/{sid}{ext}"
    if dicom:
        paths["image_dicom"] = f"dicom/{sid}/image.dcm"
        if has_mask:
            paths["seg_dicom"] = f"dicom/{sid}/seg.dcm"
    return paths


def sample_files(
    sample: Sample, affine: np.ndarray, prov: Provenance, compress: bool, dicom: bool
) -> dict[str, tuple[str, bytes]]:
    """Every file of a sample, by role: (relative path, bytes). Deterministic: same sample, same bytes."""
    has_mask = sample.lesion is not None
    paths = sample_paths(sample.sample_id, compress, dicom, has_mask)
    out = {"image_nifti": (paths["image_nifti"], nifti_bytes(sample.image[:, :, None], affine, compress))}
    if sample.lesion is not None:
        mask = sample.lesion.astype(np.uint8)[:, :, None]
        out["mask_nifti"] = (paths["mask_nifti"], nifti_bytes(mask, affine, compress))
    if dicom:
        image_bytes, seg_bytes = dicom_files(sample.image, sample.lesion, affine, prov, sample.mask_source)
        out["image_dicom"] = (paths["image_dicom"], image_bytes)
        if seg_bytes is not None:
            out["seg_dicom"] = (paths["seg_dicom"], seg_bytes)
    return out


def write_files(root: Path, files: dict[str, tuple[str, bytes]]) -> None:
    """Write a sample's files under ``root`` (a temporary export folder: the whole folder is renamed into
    place at the end, so single files need no atomic write)."""
    for rel, data in files.values():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
