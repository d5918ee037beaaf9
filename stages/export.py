"""export: synthetic samples of one cGAN variant as NIfTI (nnU-Net / Decathlon layout) and DICOM (+ SEG),
with a per-sample manifest, a memorisation gate, a dataset card and lineage.

dvc.yaml runs one stage per variant: export@<variant> = `python -m stages.export --variant <variant>`.
"""

from __future__ import annotations

import logging
import sys
from importlib import metadata
from pathlib import Path

from pipeline.errors import InputDataError
from pipeline.export.run import export
from pipeline.lineage.hashing import sha256_file
from pipeline.metrics.plots import write_json
from stages._common import base_lineage, load, parser, run_main, setup_logging

STAGE = "export"
log = logging.getLogger(f"stages.{STAGE}")


def code_version_string(code: dict[str, object]) -> str:
    """Git commit, with "-dirty" when tracked files differ from it; "unknown" outside a repository."""
    commit = code.get("git_commit")
    if not commit:
        return "unknown"
    return f"{commit}-dirty" if code.get("git_dirty") else str(commit)


def main(argv: list[str] | None = None) -> int:
    p = parser(STAGE, __doc__)
    p.add_argument("--variant", required=True, help="a key of train_cgan.variants in params.yaml")
    p.add_argument("--data", type=Path, default=Path("data/preprocess"))
    p.add_argument("--model", type=Path, help="default models/train_cgan/<variant>/model.pt")
    p.add_argument("--features", type=Path, default=Path("models/train_ae/model.pt"), help="autoencoder")
    p.add_argument(
        "--segmenter",
        type=Path,
        default=Path("models/train_seg/model.pt"),
        help="train_seg model that labels label2image samples (export.label2image_masks: segmenter)",
    )
    p.add_argument("--out", type=Path, help="default data/export/<variant>")
    p.add_argument("--metrics", type=Path, help="default metrics/export/<variant>.json")
    args = p.parse_args(argv)
    setup_logging(args.verbose)
    model = args.model or Path("models/train_cgan", args.variant, "model.pt")
    out = args.out or Path("data/export", args.variant)
    metrics_path = args.metrics or Path("metrics/export", f"{args.variant}.json")

    def body() -> None:
        _, (common, cfg) = load(args.params, "common", STAGE)
        lineage = base_lineage(STAGE, cfg, {"common": common.seed, "export": cfg.seed})
        lineage["params"]["common"] = common.model_dump()
        for path in (model, args.features):
            if not path.is_file():
                raise InputDataError(str(path), "missing: train it first (`dvc repro`)", "missing")
        lineage["inputs"] = {"generator": sha256_file(model), "features": sha256_file(args.features)}
        metrics = export(
            cfg,
            common,
            args.variant,
            args.data,
            model,
            args.features,
            out,
            code_version_string(lineage["code"]),
            metadata.version("medsynth"),
            lineage,
            args.segmenter,
        )
        write_json(metrics_path, metrics)
        log.info(
            "%s: %d of %d samples released (%d over the memorisation threshold) → %s",
            args.variant,
            metrics["n_released"],
            metrics["n_requested"],
            metrics["n_flagged"],
            out,
        )

    return run_main(STAGE, body)


if __name__ == "__main__":
    sys.exit(main())
