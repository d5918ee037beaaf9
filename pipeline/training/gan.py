"""The conditional-GAN objective (`train_cgan`): mask → image (pix2pix-style, PatchGAN) and label → image
(DCGAN-style, projection discriminator), with what keeps GANs stable on a few hundred slices: spectral
norm, R1 (lazy), hinge / non-saturating / least-squares losses, DiffAugment with an ADA-style adaptive
probability, separate learning rates and an EMA generator used for every sample.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage
from torch import nn
from torch.utils.data import Dataset

from pipeline.config import CganVariantConfig, CommonConfig, TrainCganConfig
from pipeline.data.slices import SliceDataset
from pipeline.data.volumes import VolumeDataset
from pipeline.errors import ConfigError
from pipeline.metrics.distribution import sliced_wasserstein_pyramid, swd_floor
from pipeline.models.gan import (
    build_label2image_generator,
    build_mask2image_generator,
    build_patch_discriminator,
    build_projection_discriminator,
    check_size,
)
from pipeline.runtime.distributed import DistInfo, all_reduce_mean, is_main
from pipeline.runtime.seed import seed_everything
from pipeline.training.checkpoint import load_checkpoint, save_weights
from pipeline.training.common import fit_summary, fit_task, run_key, save_lineage
from pipeline.training.diffaugment import AdaptiveP, diff_augment
from pipeline.training.ema import EMA
from pipeline.training.gan_losses import (
    d_accuracy,
    d_loss,
    d_rank_sign,
    feature_matching_loss,
    g_loss,
    r1_penalty,
)
from pipeline.training.task import StepContext

#: Normalised intensity above which a pixel is head (the head mask is the second conditioning map).
HEAD_THRESHOLD = 0.05
N_CLASSES = 2  # slice label: 0 normal, 1 abnormal
MODE_SEEKING_EPS = 1e-5
COND_CHANNELS = 2  # mask2image conditioning: head mask, lesion mask
HEAD_CHANNEL = 0  # the generator's output is zero outside the head mask, as the data are
#: The conditioning maps the PatchGAN sees: the lesion mask only. The head silhouette is visible in the image
#: itself, and a binary head-mask channel beside it stalls the discriminator: measured on the demo slices, a
#: fresh PatchGAN ranked real above generated patches 75 % of the time after 200 steps with both maps and
#: 99.8 % with the lesion map only.
D_COND = slice(1, COND_CHANNELS)


def swd_levels(size: tuple[int, ...], patch: int = 7, most: int = 4) -> int:
    """Pyramid levels whose smallest image still holds a patch (each level halves the size)."""
    levels = 1
    while levels < most and min(size) / 2**levels >= patch:
        levels += 1
    return levels


def head_mask(image: np.ndarray) -> np.ndarray:
    """Filled head silhouette (bool, same shape) of a normalised slice or volume patch."""
    return ndimage.binary_fill_holes(image > HEAD_THRESHOLD)


class CganVolumes(Dataset[dict[str, torch.Tensor]]):
    """3D patches for mask2image: ``image`` (1,*P), ``cond`` (2,*P) = head mask and lesion mask, ``label``
    (1 when the patch holds lesion voxels). Patches from :class:`VolumeDataset` (half lesion-centred)."""

    def __init__(self, volumes: VolumeDataset) -> None:
        self.volumes = volumes

    def set_epoch(self, epoch: int) -> None:
        self.volumes.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.volumes)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        item = self.volumes[i]
        return _cgan_item(item["image"], item["mask"], (item["mask"].amax() > 0).long())


def _middle_slice(x: torch.Tensor) -> torch.Tensor:
    """(B, C, X, Y, K) → (B, C, X, Y) at K // 2; 2D batches pass through (SWD and grids are 2D)."""
    return x[..., x.shape[-1] // 2] if x.ndim == 5 else x


def _cgan_item(image: torch.Tensor, lesion: torch.Tensor, label: torch.Tensor) -> dict[str, torch.Tensor]:
    """A GAN training item: the image (1, *S), its conditioning maps (2, *S) = head mask and lesion mask,
    and the label."""
    head = torch.from_numpy(head_mask(image[0].numpy()).astype(np.float32))[None]
    return {"image": image, "cond": torch.cat([head, lesion]), "label": label}


class CganSlices(Dataset[dict[str, torch.Tensor]]):
    """Slices for the GANs: ``image`` (1,H,W), ``cond`` (2,H,W) = head mask and lesion mask, ``label``."""

    def __init__(self, slices: SliceDataset) -> None:
        self.slices = slices

    def set_epoch(self, epoch: int) -> None:
        self.slices.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.slices)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        item = self.slices[i]
        return _cgan_item(item["image"], item["mask"], item["label"].clamp(min=0))


def sample_noise(
    v: CganVariantConfig,
    batch: int,
    size: tuple[int, ...],
    device: torch.device,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """The generator's noise input: maps (B, noise_channels, H, W) for mask2image, vectors (B, latent_dim)
    for label2image. Drawn on the CPU from ``generator`` (or the global RNG) so a sample does not depend on
    the device."""
    shape = (batch, v.noise_channels, *size) if v.kind == "mask2image" else (batch, v.latent_dim)
    return torch.randn(shape, generator=generator).to(device)


class CganTask:
    """Batches: ``image`` (B,1,H,W) in [0,1], ``cond`` (B,2,H,W), ``label`` (B,)."""

    def __init__(
        self,
        cfg: TrainCganConfig,
        variant: str,
        size: tuple[int, ...],
        preview: dict[str, torch.Tensor] | None,
    ) -> None:
        self.cfg, self.variant, self.v, self.size = cfg, variant, cfg.variants[variant], size
        self.name = f"train_cgan@{variant}"
        dims = len(size)
        if self.v.kind == "mask2image":
            self.g = build_mask2image_generator(self.v, COND_CHANNELS, dims, HEAD_CHANNEL)
            self.d = build_patch_discriminator(self.v, 1 + COND_CHANNELS - 1, cfg.spectral_norm, dims)
        else:
            self.g = build_label2image_generator(self.v, N_CLASSES, size)
            self.d = build_projection_discriminator(self.v, N_CLASSES, cfg.spectral_norm)
        betas = (cfg.betas[0], cfg.betas[1])
        self.opt_g = torch.optim.Adam(self.g.parameters(), lr=cfg.train.lr, betas=betas)
        self.opt_d = torch.optim.Adam(self.d.parameters(), lr=cfg.lr_d, betas=betas)
        self.ema = EMA(self.g)
        self.ada = AdaptiveP(cfg.ada_p_init, cfg.ada_target, cfg.ada_speed)
        self.preview_batch = preview
        self.d_steps = 0

    # --- the engine's protocol -------------------------------------------------------------------------
    def modules(self) -> dict[str, nn.Module]:
        return {"generator": self.g, "discriminator": self.d}

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"generator": self.opt_g, "discriminator": self.opt_d}

    def schedulers(self) -> dict[str, Any]:
        return {}

    def extra_state(self) -> dict[str, Any]:
        return {"ema": self.ema.state_dict(), "ada": self.ada.state_dict(), "d_steps": self.d_steps}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        self.ema.load_state_dict(state["ema"])
        self.ada.load_state_dict(state["ada"])
        self.d_steps = int(state["d_steps"])

    def _generate(self, g: nn.Module, batch: dict[str, torch.Tensor], noise: torch.Tensor) -> torch.Tensor:
        return g(batch["cond"], noise) if self.v.kind == "mask2image" else g(noise, batch["label"])

    def _discriminate(
        self, d: nn.Module, image: torch.Tensor, batch: dict[str, torch.Tensor], cond: torch.Tensor | None
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        if self.v.kind == "mask2image":
            return d(torch.cat([image, cond[:, D_COND]], dim=1))
        return d(image, batch["label"])

    def _augment(
        self, image: torch.Tensor, batch: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        if self.v.kind == "mask2image":
            return diff_augment(image, list(self.cfg.diffaugment), self.ada.p, cond=batch["cond"])
        return diff_augment(image, list(self.cfg.diffaugment), self.ada.p), None

    def train_step(self, batch: dict[str, torch.Tensor], ctx: StepContext) -> dict[str, Any]:
        g, d = ctx.modules["generator"], ctx.modules["discriminator"]
        real = batch["image"]
        noise = sample_noise(self.v, real.shape[0], self.size, ctx.device)

        # discriminator step
        with torch.no_grad(), ctx.autocast():
            fake = self._generate(g, batch, noise).float()
        real_aug, real_cond = self._augment(real, batch)
        fake_aug, fake_cond = self._augment(fake, batch)
        lazy_r1 = self.cfg.r1_gamma > 0 and self.d_steps % self.cfg.r1_every == 0
        if lazy_r1:
            real_aug = real_aug.detach().requires_grad_(True)
        with ctx.autocast():
            real_logits, _ = self._discriminate(d, real_aug, batch, real_cond)
            fake_logits, _ = self._discriminate(d, fake_aug, batch, fake_cond)
        loss_d = d_loss(real_logits.float(), fake_logits.float(), self.cfg.loss)
        r1 = torch.zeros((), device=real.device)
        if lazy_r1:
            # lazy regularisation (StyleGAN2): every r1_every steps, scaled up by r1_every
            r1 = r1_penalty(real_aug, real_logits.float())
            loss_d = loss_d + 0.5 * self.cfg.r1_gamma * self.cfg.r1_every * r1
        self.opt_d.zero_grad(set_to_none=True)
        loss_d.backward()
        self.opt_d.step()
        self.d_steps += 1
        acc_real, acc_fake = d_accuracy(real_logits.detach().float(), fake_logits.detach().float())
        rank = d_rank_sign(real_logits.detach().float(), fake_logits.detach().float())
        # one p for all ranks (as StyleGAN2-ADA): each rank's own signal would let them drift apart
        self.ada.update(all_reduce_mean({"ada": rank})["ada"])

        # generator step
        with ctx.autocast():
            fake = self._generate(g, batch, noise)
        fake = fake.float()
        fake_aug, fake_cond = self._augment(fake, batch)
        with ctx.autocast():
            fake_logits, fake_feats = self._discriminate(d, fake_aug, batch, fake_cond)
        loss_g = g_loss(fake_logits.float(), self.cfg.loss)
        l1 = F.l1_loss(fake, real)
        total = loss_g
        if self.v.l1_weight > 0:
            total = total + self.v.l1_weight * l1
        if self.v.feature_matching_weight > 0:
            with torch.no_grad(), ctx.autocast():
                _, real_feats = self._discriminate(d, real_aug.detach(), batch, real_cond)
            total = total + self.v.feature_matching_weight * feature_matching_loss(
                [f.float() for f in real_feats], [f.float() for f in fake_feats]
            )
        ms = torch.zeros((), device=real.device)
        if self.v.mode_seeking_weight > 0:
            # Mode seeking (Mao et al. 2019): a second draw with other noise for the same conditions; the
            # loss grows as the images stop differing, so G cannot ignore its noise.
            noise2 = sample_noise(self.v, real.shape[0], self.size, ctx.device)
            with ctx.autocast():
                fake2 = self._generate(g, batch, noise2).float()
            ms = (fake - fake2).abs().mean() / (noise - noise2).abs().mean()
            total = total + self.v.mode_seeking_weight / (ms + MODE_SEEKING_EPS)
        self.opt_g.zero_grad(set_to_none=True)
        total.backward()
        self.opt_g.step()
        self.ema.update(self.g, self.cfg.ema_decay)
        return {
            "d_loss": loss_d.detach(),
            "g_loss": loss_g.detach(),
            "l1": l1.detach(),
            "r1": r1.detach(),
            "mode_seeking": ms.detach(),
            "d_real_acc": acc_real,
            "d_fake_acc": acc_fake,
            "d_rank_acc": (rank + 1.0) / 2.0,
            "ada_p": self.ada.p,
        }

    @torch.no_grad()
    def validate(self, batches: Iterable[dict[str, torch.Tensor]], ctx: StepContext) -> dict[str, float]:
        """EMA generator on the validation conditions (fixed noise): sliced Wasserstein distance on Laplacian
        pyramids against the real validation slices, and the L1 to them (mask2image)."""
        g = self.ema.module.to(ctx.device)
        reals, fakes, l1 = [], [], []
        gen = torch.Generator().manual_seed(0)
        seen = 0
        for batch in batches:
            if seen >= self.cfg.swd_samples:
                break
            noise = sample_noise(self.v, batch["image"].shape[0], self.size, ctx.device, gen)
            with ctx.autocast():
                fake = self._generate(g, batch, noise).float()
            reals.append(_middle_slice(batch["image"].float()).cpu())
            fakes.append(_middle_slice(fake).cpu())
            l1.append(float(F.l1_loss(fake, batch["image"])))
            seen += batch["image"].shape[0]
        real_t, fake_t = torch.cat(reals)[: self.cfg.swd_samples], torch.cat(fakes)[: self.cfg.swd_samples]
        swd = sliced_wasserstein_pyramid(real_t, fake_t, levels=swd_levels(self.size[:2]), seed=0)
        return {"swd": float(swd["mean"]), "l1": float(np.mean(l1))}

    @torch.no_grad()
    def preview(self, ctx: StepContext) -> dict[str, np.ndarray]:
        """Sample grid from fixed conditions and fixed noise (the same every epoch): per column the
        condition (lesion outline on the head mask) or label, the real slice, then two EMA samples."""
        if self.preview_batch is None:
            return {}
        g = self.ema.module.to(ctx.device)
        batch = {k: v.to(ctx.device) for k, v in self.preview_batch.items()}
        n = batch["image"].shape[0]
        image, cond = _middle_slice(batch["image"]), _middle_slice(batch["cond"])
        rows = [_display(image[:, 0].cpu().numpy())]
        if self.v.kind == "mask2image":
            rows.insert(0, _display((0.3 * cond[:, 0] + 0.7 * cond[:, 1]).cpu().numpy()))
        for seed in (1, 2):
            noise = sample_noise(self.v, n, self.size, ctx.device, torch.Generator().manual_seed(seed))
            with ctx.autocast():
                fake = _middle_slice(self._generate(g, batch, noise).float())
            rows.append(_display(fake[:, 0].cpu().numpy()))
        grid = np.concatenate([np.concatenate(list(r), axis=1) for r in rows], axis=0)
        return {"samples": np.clip(grid, 0.0, 1.0)}


def _display(x: np.ndarray) -> np.ndarray:
    """(…, i, j) slices shown with anterior up and the patient's right on the right, like save_png."""
    return np.swapaxes(x, -1, -2)[..., ::-1, :]


def train_cgan(
    cfg: TrainCganConfig,
    common: CommonConfig,
    variant: str,
    data_dir: Path,
    out_dir: Path,
    live_dir: Path | None,
    *,
    dist: DistInfo | None = None,
    progress: bool = False,
    lineage: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Train one variant on the train split's labelled slices; keep the checkpoint with the lowest
    validation SWD; write ``model.pt`` (EMA generator, generator, discriminator + config) and
    ``lineage.json``; return the metrics, with the real-vs-real SWD floor beside the generated one."""
    if variant not in cfg.variants:
        raise ConfigError(f"train_cgan: no variant {variant!r} (have {sorted(cfg.variants)})")
    seed_everything(common.seed, common.deterministic)
    train_set: CganSlices | CganVolumes
    val_set: CganSlices | CganVolumes
    if cfg.spatial_dims == 3:
        if cfg.variants[variant].kind != "mask2image":
            raise ConfigError(
                f"train_cgan: spatial_dims 3 is built for mask2image only; variant {variant!r} is "
                f"{cfg.variants[variant].kind} (2D only)"
            )
        check_size(tuple(cfg.patch_size), cfg.variants[variant])
        train_set = CganVolumes(VolumeDataset(data_dir, "train", cfg.patch_size, None, common.seed))
        val_set = CganVolumes(VolumeDataset(data_dir, "val", cfg.patch_size, None, common.seed + 1))
        size: tuple[int, ...] = tuple(int(p) for p in cfg.patch_size)
        labels = np.array([int(val_set[i]["label"]) for i in range(len(val_set))])
        train_abnormal: float | None = None  # patches: lesion-centred with the dataset's pos_fraction
    else:
        train_set = CganSlices(
            SliceDataset(
                data_dir / "slices" / "train",
                "labelled",
                cfg.min_foreground,
                None,
                common.seed,
                cfg.variants[variant].abnormal_fraction,
            )
        )
        val_set = CganSlices(SliceDataset(data_dir / "slices" / "val", "labelled", cfg.min_foreground, None))
        size = tuple(int(s) for s in train_set.slices.store.image.shape[1:])
        labels = np.array([int(val_set.slices.store.label[int(r)]) for r in val_set.slices.rows])
        train_rows = train_set.slices.rows
        train_abnormal = float(np.mean(np.asarray(train_set.slices.store.label)[train_rows] == 1))
    abnormal, normal = np.flatnonzero(labels == 1), np.flatnonzero(labels == 0)
    half = cfg.n_preview // 2
    picks = [*abnormal[:half], *normal[: cfg.n_preview - min(half, abnormal.size)]][: cfg.n_preview]
    items = [val_set[int(i)] for i in picks]
    preview = {k: torch.stack([it[k] for it in items]) for k in ("image", "cond", "label")} if items else None
    task = CganTask(cfg, variant, size, preview)  # type: ignore[arg-type]
    key = f"{run_key(cfg, common, data_dir)}-{variant}"
    result = fit_task(
        task,
        train_set,
        val_set,
        cfg.train,
        common,
        ("val/swd", "min"),
        key,
        out_dir,
        live_dir,
        dist,
        progress,
    )
    if dist is not None and not is_main(dist):
        return {}
    best = out_dir / "best.pt"
    if best.is_file():
        state = load_checkpoint(best)
        task.load_extra_state(state.extra)
        task.g.load_state_dict(state.modules["generator"])
        task.d.load_state_dict(state.modules["discriminator"])
    val_images = torch.stack([val_set[i]["image"] for i in range(min(len(val_set), 2 * cfg.swd_samples))])
    floor = swd_floor(_middle_slice(val_images), seed=0, levels=swd_levels(size[:2]))  # type: ignore[arg-type]
    last = result.history[-1] if result.history else {}
    metrics = {
        **fit_summary(result),
        "variant": variant,
        "best_val_swd": result.best_metric,
        "val_swd_real_floor": float(floor["mean"]),
        "train_items_per_epoch": len(train_set),
        "train_abnormal_share": train_abnormal,  # after abnormal_fraction's repeats
        "final": {k.split("/", 1)[1]: v for k, v in last.items() if k.startswith(("train/", "val/"))},
    }
    modules = {"generator_ema": task.ema.module, "generator": task.g, "discriminator": task.d}
    meta = {
        "config": cfg.model_dump(),
        "variant": variant,
        "size": list(size),
        "run_key": key,
        "stage": "train_cgan",
        # Read back by export: a file trained before the head-masked output has no key and loads unmasked.
        "silhouette_channel": getattr(task.g, "silhouette_channel", None),
    }
    save_weights(out_dir / "model.pt", modules, meta)
    if lineage is not None:
        save_lineage(out_dir, key, common, result, lineage)
    return metrics
