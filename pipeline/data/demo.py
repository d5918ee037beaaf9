"""Deterministic brain MR phantom, written the way scanners and converters write it.

The anatomy (scalp, skull, CSF, cortex with sulci, white matter, lateral ventricles, lesions) is a function
of world RAS millimetres. Each case is *acquired* on a voxel grid (axial, oblique or a NIfTI axis order) by
evaluating that function at every voxel centre ``affine @ [i, j, k, 1]``, so an oblique acquisition shows the
same anatomy as an axial one. Layout under ``out_dir``::

    README.md
    dicom/<case>/image/IM0001.dcm …   one MR Image Storage file per slice ("T2 FLAIR AX phantom")
    dicom/<case>/mask/IM0001.dcm …    lesion mask (0/1) as a second MR series, same study and geometry
    nifti/<case>_image.nii.gz         image (int16 or float32), sform = qform = scanner
    nifti/<case>_mask.nii.gz          uint8 mask on the same affine

Every random draw comes from ``numpy.random.default_rng([seed, case_index, stream])``, so adding cases
does not change earlier ones, and the same config gives byte-identical files on the same platform (no
timestamps, UIDs hashed from seed and case, gzip mtime 0). Transcendental functions in numpy can differ by
an ulp between CPU builds; a rounded voxel may then differ across machines, never across runs on one.
"""

from __future__ import annotations

import gzip
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import nibabel as nib
import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

from pipeline.config import DemoDataConfig
from pipeline.errors import ConfigError
from pipeline.io.atomic import atomic_dir
from pipeline.io.volume import LPS_TO_RAS
from pipeline.lineage.record import write_lineage

log = logging.getLogger(__name__)

#: Namespace mixed into every hashed UID; bump it when the phantom changes meaning.
UID_NAMESPACE = "medsynth-demo-phantom-v1"
IMAGE_SERIES_DESCRIPTION = "T2 FLAIR AX phantom"
OBLIQUE_SERIES_DESCRIPTION = "T2 FLAIR OBL phantom"
MASK_SERIES_SUFFIX = " lesion mask"
NIFTI_IMAGE_SUFFIX = "_image"
NIFTI_MASK_SUFFIX = "_mask"
#: NIfTI voxel axis orders, cycled over the NIfTI cases: the first is not RAS, so readers must reorient.
NIFTI_AXCODES: tuple[str, ...] = ("LPS", "RAS", "LAS")
#: The field of view must hold the head (about 150 × 180 mm in plane) or lesions may fall outside it.
MIN_INPLANE_FOV_MM = 160.0
MIN_SLAB_MM = 20.0
STUDY_DATE = "20000101"

_STREAM_ANATOMY, _STREAM_ACQUISITION, _STREAM_NOISE, _STREAM_LESIONS, _STREAM_FILES = 1, 2, 3, 4, 5
_EDGE_MM = 0.7  # partial-volume width of tissue boundaries
_MIN_LESION_VOXELS = 4


@dataclass(frozen=True)
class DemoCase:
    """One generated case; ``image`` and ``mask`` are POSIX paths relative to ``out_dir`` (DICOM: folders)."""

    name: str
    format: Literal["dicom", "nifti"]
    oblique: bool
    has_lesion: bool
    n_lesion_voxels: int
    image: str
    mask: str


@dataclass(frozen=True)
class RenderedCase:
    """A case sampled on its grid: ``image`` float32 signal (I, J, K), ``mask`` uint8 lesion mask,
    ``brain`` bool brain (inside the pial surface) mask, ``affine`` voxel → RAS mm."""

    image: np.ndarray
    mask: np.ndarray
    brain: np.ndarray
    affine: np.ndarray


# --------------------------------------------------------------------------------------------- planning


@dataclass(frozen=True)
class CasePlan:
    """How case ``index`` is stored: format, obliquity, lesion presence and file conventions."""

    index: int
    name: str
    format: Literal["dicom", "nifti"]
    oblique: bool
    has_lesion: bool
    order: Literal["ascending", "descending", "shuffled"]
    pixel_style: int  # 0: 12-bit unsigned slope 1; 1: 16-bit unsigned slope 0.25; 2: 16-bit signed slope 0.5
    axcodes: str  # NIfTI voxel axis order


def _validate(cfg: DemoDataConfig) -> None:
    cols, rows, slices = cfg.matrix
    if min(cols, rows) < 8 or slices < 3:
        raise ConfigError(f"demo_data.matrix: need at least 8×8 pixels and 3 slices, got {cfg.matrix}")
    if cols * rows * slices > 64 * 1024 * 1024 or max(cols, rows) > 2048:
        raise ConfigError(f"demo_data.matrix: {cfg.matrix} is too large for a demo phantom")
    if min(cfg.spacing) <= 0.0 or not all(math.isfinite(s) for s in cfg.spacing):
        raise ConfigError(f"demo_data.spacing: every spacing must be a positive number, got {cfg.spacing}")
    if cfg.n_nifti + cfg.n_oblique > cfg.n_cases:
        raise ConfigError(
            f"demo_data: n_nifti ({cfg.n_nifti}) + n_oblique ({cfg.n_oblique}) "
            f"exceeds n_cases ({cfg.n_cases})"
        )
    fov = (cols * cfg.spacing[0], rows * cfg.spacing[1])
    if min(fov) < MIN_INPLANE_FOV_MM:
        raise ConfigError(
            f"demo_data: in-plane field of view {fov[0]:.0f}×{fov[1]:.0f} mm (matrix × spacing) is smaller "
            f"than the {MIN_INPLANE_FOV_MM:.0f} mm the phantom head needs"
        )
    if slices * cfg.spacing[2] < MIN_SLAB_MM:
        raise ConfigError(
            f"demo_data: slab of {slices * cfg.spacing[2]:.0f} mm is thinner than {MIN_SLAB_MM} mm"
        )


def _has_lesion(index: int, fraction: float) -> bool:
    """Low-discrepancy choice: every prefix of cases holds ``fraction`` of lesion cases, rounded down."""
    return math.floor((index + 1) * fraction + 1e-9) > math.floor(index * fraction + 1e-9)


def plan_cases(cfg: DemoDataConfig) -> list[CasePlan]:
    """Decide format, obliquity, lesion presence and file conventions of every case (no randomness).

    Cases ``0 … n_nifti-1`` are NIfTI, the next ``n_oblique`` are oblique DICOM, the rest axial DICOM, so
    growing ``n_cases`` only appends cases.
    """
    _validate(cfg)
    plans = []
    n_nifti = 0
    for i in range(cfg.n_cases):
        fmt: Literal["dicom", "nifti"] = "nifti" if i < cfg.n_nifti else "dicom"
        order: Literal["ascending", "descending", "shuffled"] = (
            "ascending",
            "ascending",
            "shuffled",
            "descending",
        )[i % 4]
        plans.append(
            CasePlan(
                index=i,
                name=f"case{i:03d}",
                format=fmt,
                oblique=cfg.n_nifti <= i < cfg.n_nifti + cfg.n_oblique,
                has_lesion=_has_lesion(i, cfg.lesion_fraction),
                order=order,
                pixel_style=i % 3,
                axcodes=NIFTI_AXCODES[n_nifti % len(NIFTI_AXCODES)],
            )
        )
        n_nifti += fmt == "nifti"
    return plans


def _rng(cfg: DemoDataConfig, index: int, stream: int) -> np.random.Generator:
    return np.random.default_rng([cfg.seed % 2**63, index, stream])


# --------------------------------------------------------------------------------------------- geometry


@dataclass(frozen=True)
class _Grid:
    """Acquisition grid. ``affine`` maps (i=column, j=row, k=slice) to RAS mm. For DICOM, ``iop`` and
    ``ipp`` are the exact strings written, and ``affine`` is rebuilt from them: readers see the same grid."""

    shape: tuple[int, int, int]
    affine: np.ndarray
    iop: tuple[str, ...] = ()
    ipp: tuple[tuple[str, str, str], ...] = ()


def _ds(value: float, decimals: int) -> str:
    """A DICOM DS string (≤ 16 characters) with a fixed number of decimals, trailing zeros trimmed."""
    text = f"{round(float(value), decimals):.{decimals}f}".rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text


def _rotation(axis: int, degrees: float) -> np.ndarray:
    c, s = math.cos(math.radians(degrees)), math.sin(math.radians(degrees))
    a, b = [(1, 2), (2, 0), (0, 1)][axis]
    rot = np.eye(3)
    rot[a, a], rot[a, b], rot[b, a], rot[b, b] = c, -s, s, c
    return rot


def _fov_centre(rng: np.random.Generator) -> np.ndarray:
    """Centre of the imaged volume in RAS mm: near the head centre, a little superior (vertex in view)."""
    return np.array([rng.normal(0, 2.0), rng.normal(-2.0, 3.0), 12.0 + rng.normal(0, 3.0)])


def _dicom_grid(cfg: DemoDataConfig, plan: CasePlan) -> _Grid:
    rng = _rng(cfg, plan.index, _STREAM_ACQUISITION)
    cols, rows, slices = cfg.matrix
    dc, dr, dz = cfg.spacing
    centre_ras = _fov_centre(rng)
    first = rng.uniform(5.0, 20.0) * rng.choice([-1.0, 1.0])
    second = rng.uniform(5.0, 12.0) * rng.choice([-1.0, 1.0]) if rng.random() < 0.5 else 0.0
    axis = int(rng.integers(0, 2))  # first tilt about L-R (pitch) or A-P (roll)
    rot = np.eye(3)
    if plan.oblique:
        rot = _rotation(axis, first) @ _rotation(1 - axis, second)
    row_dir, col_dir = rot @ [1.0, 0.0, 0.0], rot @ [0.0, 1.0, 0.0]  # LPS: towards patient left, posterior
    iop = tuple(_ds(v, 6) for v in (*row_dir, *col_dir))
    row_dir, col_dir = np.array([float(v) for v in iop[:3]]), np.array([float(v) for v in iop[3:]])
    normal = np.cross(row_dir, col_dir)
    centre_lps = LPS_TO_RAS[:3, :3] @ centre_ras
    origin = (
        centre_lps
        - row_dir * dc * (cols - 1) / 2
        - col_dir * dr * (rows - 1) / 2
        - normal * dz * (slices - 1) / 2
    )
    ipp = tuple(tuple(_ds(v, 4) for v in origin + k * dz * normal) for k in range(slices))
    first_pos = np.array([float(v) for v in ipp[0]])
    step = (np.array([float(v) for v in ipp[-1]]) - first_pos) / (slices - 1)
    lps = np.eye(4)
    lps[:3, 0], lps[:3, 1], lps[:3, 2], lps[:3, 3] = row_dir * dc, col_dir * dr, step, first_pos
    return _Grid((cols, rows, slices), LPS_TO_RAS @ lps, iop, ipp)  # type: ignore[arg-type]


_AXIS_VECTORS = {
    "R": (1.0, 0.0, 0.0),
    "L": (-1.0, 0.0, 0.0),
    "A": (0.0, 1.0, 0.0),
    "P": (0.0, -1.0, 0.0),
    "S": (0.0, 0.0, 1.0),
    "I": (0.0, 0.0, -1.0),
}


def _nifti_grid(cfg: DemoDataConfig, plan: CasePlan) -> _Grid:
    rng = _rng(cfg, plan.index, _STREAM_ACQUISITION)
    shape = tuple(int(n) for n in cfg.matrix)
    centre = _fov_centre(rng)
    affine = np.eye(4)
    for axis, code in enumerate(plan.axcodes):
        affine[:3, axis] = np.array(_AXIS_VECTORS[code]) * cfg.spacing[axis]
    affine[:3, 3] = np.round(centre - affine[:3, :3] @ ((np.array(shape) - 1) / 2), 3)
    # NIfTI stores the sform as float32: sample on the grid a reader will see.
    return _Grid(shape, affine.astype(np.float32).astype(np.float64))  # type: ignore[arg-type]


def _voxel_centres(grid: _Grid) -> np.ndarray:
    """World RAS mm of every voxel centre, (I*J*K, 3) in C order of (i, j, k)."""
    idx = np.indices(grid.shape, dtype=np.float64).reshape(3, -1)
    return (grid.affine[:3, :3] @ idx + grid.affine[:3, 3:4]).T


# --------------------------------------------------------------------------------------------- anatomy


@dataclass(frozen=True)
class _Waves:
    """Sum of cosines ``Σ amp·cos(freq·(dir·x) + phase)`` over M components; x is (N, 3)."""

    dirs: np.ndarray
    freq: np.ndarray
    phase: np.ndarray
    amp: np.ndarray

    def __call__(self, x: np.ndarray) -> np.ndarray:
        # float32 is ample for smooth textures (phase error < 1e-4 rad) and several times faster.
        k = (self.dirs * self.freq[:, None]).T.astype(np.float32)
        arg = x.astype(np.float32) @ k + self.phase.astype(np.float32)
        return np.cos(arg) @ self.amp.astype(np.float32)


def _waves(rng: np.random.Generator, m: int, freq: tuple[float, float], amp: float) -> _Waves:
    dirs = rng.normal(size=(m, 3))
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    return _Waves(
        dirs=dirs,
        freq=rng.uniform(*freq, size=m),
        phase=rng.uniform(0.0, 2 * math.pi, size=m),
        amp=amp * rng.uniform(0.5, 1.5, size=m) / math.sqrt(m / 2),
    )


def _random_rotation(rng: np.random.Generator) -> np.ndarray:
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    return q if np.linalg.det(q) > 0 else -q


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))


@dataclass(frozen=True)
class _Ventricle:
    centre: np.ndarray  # local mm
    axes: np.ndarray
    rot: np.ndarray
    bend: float


@dataclass(frozen=True)
class _Lesion:
    centre: np.ndarray  # local mm
    axes: np.ndarray
    rot: np.ndarray
    lumps: _Waves
    factor: float  # lesion intensity relative to white matter
    halo: float  # relative oedema brightness around a hyperintense lesion (0 = none)


@dataclass(frozen=True)
class _Anatomy:
    centre: np.ndarray  # head centre, RAS mm
    rot: np.ndarray  # columns: head-local x (right), y (anterior), z (superior) in RAS
    axes: np.ndarray  # outer scalp half-axes, mm
    shape_waves: _Waves
    scalp: float
    bone: float
    csf_rim: float
    sulcus_depth: float
    gyri: _Waves
    ventricles: tuple[_Ventricle, ...]
    texture: _Waves
    bias: _Waves
    tissue: dict[str, float]
    noise_sigma: float


def _draw_anatomy(rng: np.random.Generator) -> _Anatomy:
    rot = (
        _rotation(2, rng.uniform(-6, 6)) @ _rotation(0, rng.uniform(-6, 6)) @ _rotation(1, rng.uniform(-4, 4))
    )
    gain = rng.uniform(0.85, 1.2)
    jitter = rng.normal(0.0, 0.05, size=8).clip(-0.12, 0.12)
    tissue = {
        name: gain * base * (1.0 + j)
        for (name, base), j in zip(
            [
                ("scalp", 950.0),
                ("bone", 45.0),
                ("diploe", 320.0),
                ("csf", 110.0),
                ("gm", 770.0),
                ("wm", 585.0),
                ("ventricle", 85.0),
                ("background", 0.0),
            ],
            jitter,
            strict=True,
        )
    }
    vents = []
    y_c, z_c = rng.normal(-4.0, 2.0), rng.normal(14.0, 2.0)
    half_gap = rng.uniform(5.0, 8.0)
    for side in (-1.0, 1.0):
        vents.append(
            _Ventricle(
                centre=np.array([side * half_gap, y_c, z_c]),
                axes=np.array([rng.uniform(3.5, 6.0), rng.uniform(20.0, 27.0), rng.uniform(6.0, 9.0)]),
                rot=_rotation(1, side * rng.uniform(0.0, 8.0)),
                bend=side * rng.uniform(4.0, 8.0),
            )
        )
    return _Anatomy(
        centre=np.array([rng.normal(0, 3.0), rng.normal(0, 4.0), rng.normal(0, 3.0)]),
        rot=rot,
        axes=np.array([75.0, 90.0, 66.0]) * rng.uniform(0.93, 1.07, size=3),
        shape_waves=_waves(rng, 6, (1.0, 3.0), 0.025),
        scalp=rng.uniform(4.0, 6.5),
        bone=rng.uniform(5.0, 7.5),
        csf_rim=rng.uniform(1.5, 3.0),
        sulcus_depth=rng.uniform(9.0, 13.0),
        gyri=_waves(rng, 12, (18.0, 28.0), 1.0),
        ventricles=tuple(vents),
        texture=_waves(rng, 12, (2 * math.pi / 40.0, 2 * math.pi / 8.0), 0.025),
        bias=_waves(rng, 4, (2 * math.pi / 400.0, 2 * math.pi / 150.0), 0.09),
        tissue=tissue,
        noise_sigma=gain * rng.uniform(12.0, 22.0),
    )


def _ellipsoid_depth(q: np.ndarray, axes: np.ndarray, lumps: Callable[[np.ndarray], np.ndarray] | None):
    """Approximate depth in mm below the surface of a (lumpy) ellipsoid along the ray from its centre."""
    r = np.sqrt(np.einsum("ni,ni->n", q, q))
    u = q / np.maximum(r, 1e-6)[:, None]
    scaled = u / axes
    radius = 1.0 / np.sqrt(np.einsum("ni,ni->n", scaled, scaled))
    if lumps is not None:
        radius = radius * (1.0 + lumps(u))
    return radius - r, u


@dataclass(frozen=True)
class _Fields:
    """Soft tissue fractions at N points (all (N,))."""

    head: np.ndarray
    skull: np.ndarray
    diploe: np.ndarray
    inner: np.ndarray  # inside the inner table of the skull (CSF and brain)
    brain: np.ndarray  # inside the pial surface
    sulci: np.ndarray
    wm: np.ndarray
    ventricle: np.ndarray
    brain_depth: np.ndarray  # mm below the pial surface
    local: np.ndarray  # (N, 3) head-local mm


def _fields(anat: _Anatomy, pts: np.ndarray) -> _Fields:
    q = (pts - anat.centre) @ anat.rot
    depth, u = _ellipsoid_depth(q, anat.axes, anat.shape_waves)
    t_bone = anat.scalp
    t_inner = t_bone + anat.bone
    t_pial = t_inner + anat.csf_rim
    bd = depth - t_pial
    g = anat.gyri(u)
    near_sulcus = np.clip(1.0 - np.abs(g) / 1.3, 0.0, 1.0)
    wm_depth = 3.0 + (anat.sulcus_depth + 1.5) * near_sulcus
    sulci = _sigmoid((0.3 - np.abs(g)) / 0.06) * _sigmoid((anat.sulcus_depth - bd) / _EDGE_MM)
    fissure = _sigmoid((1.1 - np.abs(q[:, 0])) / 0.4) * _sigmoid((28.0 - bd) / 2.0)
    vent = np.zeros(len(q))
    for v in anat.ventricles:
        qv = (q - v.centre) @ v.rot
        qv[:, 0] -= v.bend * (qv[:, 1] / v.axes[1]) ** 2
        vd, _ = _ellipsoid_depth(qv, v.axes, None)
        vent = np.maximum(vent, _sigmoid(vd / _EDGE_MM))
    return _Fields(
        head=_sigmoid(depth / _EDGE_MM),
        skull=_sigmoid((depth - t_bone) / _EDGE_MM),
        diploe=_sigmoid((depth - t_bone - anat.bone * 0.35) / _EDGE_MM)
        * _sigmoid((t_bone + anat.bone * 0.65 - depth) / _EDGE_MM),
        inner=_sigmoid((depth - t_inner) / _EDGE_MM),
        brain=_sigmoid(bd / _EDGE_MM),
        sulci=np.maximum(sulci, fissure),
        wm=_sigmoid((bd - wm_depth) / _EDGE_MM) * (1.0 - fissure),
        ventricle=vent,
        brain_depth=bd,
        local=q,
    )


def _draw_lesions(anat: _Anatomy, grid: _Grid, rng: np.random.Generator, count: int) -> tuple[_Lesion, ...]:
    """``count`` lesions, each centred deep enough to lie inside the brain and inside the field of view."""
    inv = np.linalg.inv(grid.affine)
    lesions = []
    for _ in range(count):
        radius = math.exp(rng.uniform(math.log(4.0), math.log(20.0)))
        axes = radius * rng.uniform(0.7, 1.3, size=3)
        rot = _random_rotation(rng)
        lumps = _waves(rng, 5, (2.0, 5.0), 0.14)
        hyper = rng.random() < 0.7
        factor = rng.uniform(1.4, 1.9) if hyper else rng.uniform(0.3, 0.55)
        halo = rng.uniform(0.1, 0.3) if hyper and rng.random() < 0.5 else 0.0
        margin = float(axes.max()) * 1.2 + 2.0
        candidates = rng.uniform(-1.0, 1.0, size=(256, 3)) * (anat.axes - 15.0)  # head-local mm
        world = anat.centre + candidates @ anat.rot.T
        f = _fields(anat, world)
        vox = world @ inv[:3, :3].T + inv[:3, 3]
        inside_fov = np.all((vox >= 1.0) & (vox <= np.array(grid.shape) - 2.0), axis=1)
        ok = np.flatnonzero(inside_fov & (f.brain_depth >= margin) & (f.ventricle < 0.05))
        if ok.size:
            centre = candidates[ok[0]]
        else:  # a thin slab or a big lesion: fall back to a small lesion at the centre of the imaged volume
            axes = np.full(3, 4.0)
            world_c = grid.affine[:3, :3] @ ((np.array(grid.shape) - 1) / 2) + grid.affine[:3, 3]
            centre = (world_c - anat.centre) @ anat.rot
        lesions.append(_Lesion(centre, axes, rot, lumps, float(factor), float(halo)))
    return tuple(lesions)


def _lesion_fraction(lesion: _Lesion, q: np.ndarray, scale: float = 1.0) -> np.ndarray:
    """Soft lesion occupancy at head-local points ``q`` (N, 3); only points near the lesion are evaluated."""
    out = np.zeros(len(q))
    reach = float(lesion.axes.max()) * scale * 1.5 + 3.0 * _EDGE_MM
    near = np.flatnonzero(np.all(np.abs(q - lesion.centre) < reach, axis=1))
    if near.size:
        ql = (q[near] - lesion.centre) @ lesion.rot
        depth, _ = _ellipsoid_depth(ql, lesion.axes * scale, lesion.lumps)
        out[near] = _sigmoid(depth / _EDGE_MM)
    return out


def _render(
    anat: _Anatomy, grid: _Grid, lesions: tuple[_Lesion, ...], noise: np.random.Generator
) -> RenderedCase:
    pts = _voxel_centres(grid)
    f = _fields(anat, pts)
    t = anat.tissue

    def lerp(a: np.ndarray, b: float | np.ndarray, w: np.ndarray) -> np.ndarray:
        return a + (b - a) * w

    texture = anat.texture(f.local)
    value = np.full(len(pts), t["background"])
    value = lerp(value, t["scalp"] * (1.0 + 2.0 * texture), f.head)
    value = lerp(value, t["bone"], f.skull)
    value = lerp(value, t["diploe"], f.diploe)
    value = lerp(value, t["csf"], f.inner)
    brain_texture = 1.0 + texture
    value = lerp(value, t["gm"] * brain_texture, f.brain)
    value = lerp(value, t["csf"], f.sulci * f.brain)
    value = lerp(value, t["wm"] * brain_texture, f.wm * f.brain)
    value = lerp(value, t["ventricle"], f.ventricle * f.brain)
    lesion_any = np.zeros(len(pts))
    for les in lesions:
        if les.halo > 0.0:
            value = lerp(value, value * (1.0 + les.halo), _lesion_fraction(les, f.local, 1.5) * f.brain)
        frac = _lesion_fraction(les, f.local) * f.brain
        value = lerp(value, t["wm"] * les.factor * (1.0 + 2.0 * texture), frac)
        lesion_any = np.maximum(lesion_any, frac)
    value = value * np.exp(anat.bias(pts - grid.affine[:3, 3]))
    shape = grid.shape
    n1 = noise.standard_normal(len(pts))
    n2 = noise.standard_normal(len(pts))
    signal = np.hypot(value + anat.noise_sigma * n1, anat.noise_sigma * n2)  # Rician magnitude
    return RenderedCase(
        image=signal.reshape(shape).astype(np.float32),
        mask=(lesion_any >= 0.5).reshape(shape).astype(np.uint8),
        brain=(f.brain >= 0.5).reshape(shape),
        affine=grid.affine.copy(),
    )


def _grid_for(cfg: DemoDataConfig, plan: CasePlan) -> _Grid:
    return _nifti_grid(cfg, plan) if plan.format == "nifti" else _dicom_grid(cfg, plan)


def render_case(cfg: DemoDataConfig, index: int) -> RenderedCase:
    """Sample case ``index`` of ``cfg`` on its acquisition grid (what generate_demo stores, unquantised)."""
    plans = plan_cases(cfg)
    if not 0 <= index < len(plans):
        raise ConfigError(f"demo_data: case index {index} outside 0…{len(plans) - 1}")
    return _render_plan(cfg, plans[index], _grid_for(cfg, plans[index]))


def _render_plan(cfg: DemoDataConfig, plan: CasePlan, grid: _Grid) -> RenderedCase:
    anat = _draw_anatomy(_rng(cfg, plan.index, _STREAM_ANATOMY))
    if not plan.has_lesion:
        return _render(anat, grid, (), _rng(cfg, plan.index, _STREAM_NOISE))
    rng = _rng(cfg, plan.index, _STREAM_LESIONS)
    count = int(rng.integers(1, 4))
    for _attempt in range(20):
        lesions = _draw_lesions(anat, grid, rng, count)
        rendered = _render(anat, grid, lesions, _rng(cfg, plan.index, _STREAM_NOISE))
        if int(rendered.mask.sum()) >= _MIN_LESION_VOXELS:
            return rendered
    raise ConfigError(
        f"demo_data: could not place a visible lesion in {plan.name}; enlarge matrix or spacing"
    )


# --------------------------------------------------------------------------------------------- writers


_PIXEL_STYLES = {  # style: (BitsStored, PixelRepresentation, RescaleSlope, RescaleIntercept)
    0: (12, 0, 1.0, 0.0),
    1: (16, 0, 0.25, 0.0),
    2: (16, 1, 0.5, 1000.0),
    -1: (16, 0, 1.0, 0.0),  # masks: plain 0/1
}


_IMPLEMENTATION_UID = generate_uid(entropy_srcs=[UID_NAMESPACE, "implementation"])


def _uid(cfg: DemoDataConfig, *parts: str) -> str:
    return generate_uid(entropy_srcs=[UID_NAMESPACE, str(cfg.seed), *parts])


def _stored_pixels(signal: np.ndarray, style: int) -> np.ndarray:
    bits, signed, slope, intercept = _PIXEL_STYLES[style]
    lo, hi = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)
    stored = np.clip(np.rint((signal - intercept) / slope), lo, hi)
    return stored.astype("<i2" if signed else "<u2")


def _slice_order(plan: CasePlan, cfg: DemoDataConfig, n: int) -> list[int]:
    """Slice index held by file IM0001, IM0002, … (InstanceNumber follows the file name)."""
    if plan.order == "descending":
        return list(range(n - 1, -1, -1))
    if plan.order == "shuffled":
        return [int(k) for k in _rng(cfg, plan.index, _STREAM_FILES).permutation(n)]
    return list(range(n))


def _series_template(
    cfg: DemoDataConfig,
    plan: CasePlan,
    grid: _Grid,
    kind: Literal["image", "mask"],
    style: int,
    window: float,
) -> Dataset:
    """The attributes shared by every slice of one series (per-slice ones are set by the writer)."""
    bits, signed, slope, intercept = _PIXEL_STYLES[style]
    description = OBLIQUE_SERIES_DESCRIPTION if plan.oblique else IMAGE_SERIES_DESCRIPTION
    if kind == "mask":
        description += MASK_SERIES_SUFFIX
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = MRImageStorage
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = _IMPLEMENTATION_UID
    meta.ImplementationVersionName = "MEDSYNTH_DEMO1"
    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "OTHER"] if kind == "image" else ["DERIVED", "SECONDARY", "OTHER"]
    ds.SOPClassUID = MRImageStorage
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = ds.AcquisitionDate = STUDY_DATE
    ds.StudyTime = "120000"
    ds.SeriesTime = ds.ContentTime = ds.AcquisitionTime = "121500" if kind == "image" else "130000"
    ds.AccessionNumber = ""
    ds.Modality = "MR"
    ds.Manufacturer = "medsynth"
    ds.InstitutionName = "medsynth synthetic phantom"
    ds.ReferringPhysicianName = ""
    ds.StudyDescription = "DEMO^BRAIN phantom"
    ds.SeriesDescription = description
    ds.ManufacturerModelName = "brain phantom"
    ds.PatientName = f"DEMO^CASE{plan.index:03d}"
    ds.PatientID = f"DEMO-{plan.index:03d}"
    ds.PatientBirthDate = ""
    ds.PatientSex = "O"
    ds.PatientIdentityRemoved = "YES"
    ds.DeidentificationMethod = "synthetic phantom: no patient data"
    ds.BodyPartExamined = "BRAIN"
    ds.ScanningSequence = ["SE", "IR"]
    ds.SequenceVariant = ["SK", "SP", "MP"]
    ds.ScanOptions = ""
    ds.MRAcquisitionType = "2D"
    ds.SliceThickness = _ds(cfg.spacing[2], 4)
    ds.RepetitionTime = "9000"
    ds.EchoTime = "90"
    ds.InversionTime = "2500"
    ds.NumberOfAverages = "1"
    ds.ImagingFrequency = "127.74"
    ds.ImagedNucleus = "1H"
    ds.EchoNumbers = "1"
    ds.MagneticFieldStrength = "3"
    ds.SpacingBetweenSlices = _ds(cfg.spacing[2], 4)
    ds.EchoTrainLength = "16"
    ds.SoftwareVersions = "medsynth demo_data v1"
    ds.ProtocolName = "T2 FLAIR phantom"
    ds.InPlanePhaseEncodingDirection = "ROW"
    ds.FlipAngle = "150"
    ds.PatientPosition = "HFS"
    ds.StudyInstanceUID = _uid(cfg, plan.name, "study")
    ds.SeriesInstanceUID = _uid(cfg, plan.name, kind, "series")
    ds.StudyID = "1"
    ds.SeriesNumber = str((plan.index + 1) * 100 + (1 if kind == "image" else 2))
    ds.AcquisitionNumber = "1"
    ds.ImageOrientationPatient = list(grid.iop)
    ds.FrameOfReferenceUID = _uid(cfg, plan.name, "frame-of-reference")
    ds.PositionReferenceIndicator = ""
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = grid.shape[1]
    ds.Columns = grid.shape[0]
    ds.PixelSpacing = [_ds(cfg.spacing[1], 6), _ds(cfg.spacing[0], 6)]
    ds.BitsAllocated = 16
    ds.BitsStored = bits
    ds.HighBit = bits - 1
    ds.PixelRepresentation = signed
    ds.WindowCenter = _ds(window / 2, 1)
    ds.WindowWidth = _ds(window, 1)
    if (slope, intercept) != (1.0, 0.0):  # like Philips; others (and masks) leave the identity implicit
        ds.RescaleIntercept = _ds(intercept, 4)
        ds.RescaleSlope = _ds(slope, 6)
    return ds


def _write_dicom_series(
    folder: Path,
    cfg: DemoDataConfig,
    plan: CasePlan,
    grid: _Grid,
    pixels: np.ndarray,
    *,
    kind: Literal["image", "mask"],
    style: int,
) -> None:
    """One file per slice; ``pixels`` (I, J, K) are stored values for ``style``."""
    folder.mkdir(parents=True)
    _, _, slope, intercept = _PIXEL_STYLES[style]
    window = float(np.percentile(pixels, 99.5)) * slope + intercept if kind == "image" else 1.0
    ds = _series_template(cfg, plan, grid, kind, style, window)
    normal = np.cross([float(v) for v in grid.iop[:3]], [float(v) for v in grid.iop[3:]])
    for file_no, k in enumerate(_slice_order(plan, cfg, grid.shape[2]), start=1):
        sop_uid = _uid(cfg, plan.name, kind, "instance", str(k))
        ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
        ds.SOPInstanceUID = sop_uid
        ds.InstanceNumber = str(file_no)
        ds.ImagePositionPatient = list(grid.ipp[k])
        ds.SliceLocation = _ds(float(np.dot([float(v) for v in grid.ipp[k]], normal)), 4)
        ds.add_new(0x7FE00010, "OW", np.ascontiguousarray(pixels[:, :, k].T).tobytes())  # (rows, columns)
        ds.save_as(folder / f"IM{file_no:04d}.dcm", enforce_file_format=True)


def _write_nifti(path: Path, array: np.ndarray, affine: np.ndarray, description: str) -> None:
    img = nib.Nifti1Image(array, affine)
    img.header.set_data_dtype(array.dtype)
    img.header.set_xyzt_units("mm")
    img.header["descrip"] = description.encode("ascii")[:79]
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    path.write_bytes(gzip.compress(img.to_bytes(), compresslevel=6, mtime=0))


def _write_case(root: Path, cfg: DemoDataConfig, plan: CasePlan) -> DemoCase:
    grid = _grid_for(cfg, plan)
    rendered = _render_plan(cfg, plan, grid)
    n_lesion = int(rendered.mask.sum())
    if plan.format == "nifti":
        image = f"nifti/{plan.name}{NIFTI_IMAGE_SUFFIX}.nii.gz"
        mask = f"nifti/{plan.name}{NIFTI_MASK_SUFFIX}.nii.gz"
        (root / "nifti").mkdir(exist_ok=True)
        data = rendered.image if plan.index % 2 else np.rint(rendered.image).clip(0, 32767).astype(np.int16)
        _write_nifti(root / image, data, grid.affine, "medsynth synthetic brain phantom (no patient data)")
        _write_nifti(root / mask, rendered.mask, grid.affine, "medsynth phantom lesion mask")
    else:
        image, mask = f"dicom/{plan.name}/image", f"dicom/{plan.name}/mask"
        pixels = _stored_pixels(rendered.image, plan.pixel_style)
        _write_dicom_series(root / image, cfg, plan, grid, pixels, kind="image", style=plan.pixel_style)
        _write_dicom_series(root / mask, cfg, plan, grid, rendered.mask.astype("<u2"), kind="mask", style=-1)
    log.debug(
        "demo case %s: %s%s, %d lesion voxels", plan.name, plan.format, " oblique" * plan.oblique, n_lesion
    )
    return DemoCase(plan.name, plan.format, plan.oblique, plan.has_lesion, n_lesion, image, mask)


_README_HEAD = """\
# medsynth demo dataset: synthetic brain MR phantom

Every file here is computer-generated by `pipeline/data/demo.py` (stage `demo_data`).
It contains **no patient data**: the patient module holds pseudonyms (`DEMO^CASE007`,
`DEMO-007`) and a fixed dummy date.

The anatomy (scalp, skull, CSF, cortex with sulci, white matter, lateral ventricles,
FLAIR-like contrast, lesions) is a function of world coordinates; each case samples it on
its own acquisition grid, then a smooth bias field and Rician noise are applied. The same
parameters regenerate the same bytes.
"""

_README_LAYOUT = """\
## Layout

- `dicom/<case>/image/IM*.dcm`: MR Image Storage, Explicit VR Little Endian, one file per
  slice; some series are numbered in descending or shuffled order: sort by
  ImagePositionPatient.
- `dicom/<case>/mask/IM*.dcm`: lesion mask (0/1) as a second series of the same study, same
  geometry and FrameOfReferenceUID, SeriesDescription ending in `lesion mask`. Normal cases
  have an all-zero mask.
- `nifti/<case>{image}.nii.gz`, `nifti/<case>{mask}.nii.gz`: image and uint8 mask on the
  same affine (voxel orders {orders}).
"""


def _readme(cfg: DemoDataConfig, cases: list[DemoCase]) -> str:
    lines = [
        _README_HEAD,
        "## Parameters",
        "",
        f"- seed: {cfg.seed}",
        f"- cases: {cfg.n_cases} ({cfg.n_nifti} NIfTI, {cfg.n_oblique} oblique DICOM)",
        f"- lesion_fraction: {cfg.lesion_fraction}",
        f"- matrix (columns, rows, slices): {list(cfg.matrix)}",
        f"- spacing (column, row, slice mm): {list(cfg.spacing)}",
        "",
        _README_LAYOUT.format(
            image=NIFTI_IMAGE_SUFFIX, mask=NIFTI_MASK_SUFFIX, orders=", ".join(NIFTI_AXCODES)
        ),
        "## Cases",
        "",
        "| case | format | oblique | lesion | lesion voxels |",
        "|---|---|---|---|---|",
    ]
    for c in cases:
        lines.append(
            f"| {c.name} | {c.format} | {'yes' if c.oblique else 'no'} | {'yes' if c.has_lesion else 'no'} "
            f"| {c.n_lesion_voxels} |"
        )
    return "\n".join(lines) + "\n"


def generate_demo(
    out_dir: Path, cfg: DemoDataConfig, lineage: dict[str, Any] | None = None
) -> list[DemoCase]:
    """Write the phantom dataset to ``out_dir`` (replacing it) and return one record per case.

    Everything, ``lineage.json`` included when ``lineage`` is given, is written into a temporary sibling
    swapped in at the end (`atomic_dir`), so a killed run leaves the previous output in place.
    """
    plans = plan_cases(cfg)
    out_dir = Path(out_dir)
    with atomic_dir(out_dir) as tmp:
        cases = [_write_case(tmp, cfg, plan) for plan in plans]
        (tmp / "README.md").write_text(_readme(cfg, cases), encoding="utf-8")
        if lineage is not None:
            write_lineage(tmp, lineage)
    log.info(
        "demo data: %d cases (%d with lesions) written to %s",
        len(cases),
        sum(c.has_lesion for c in cases),
        out_dir,
    )
    return cases
