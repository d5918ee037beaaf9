"""evaluate: fidelity, diversity, privacy and usefulness of one exported cGAN variant.

dvc.yaml runs one stage per variant: evaluate@<variant> = `python -m stages.evaluate --variant <variant>`.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from pipeline.errors import InputDataError
from pipeline.evaluate.run import Models, evaluate
from pipeline.lineage.hashing import sha256_file
from pipeline.metrics.plots import write_json
from stages._common import base_lineage, load, parser, run_main, setup_logging

STAGE = "evaluate"
log = logging.getLogger(f"stages.{STAGE}")


def main(argv: list[str] | None = None) -> int:
    p = parser(STAGE, __doc__)
    p.add_argument("--variant", required=True, help="a key of train_cgan.variants in params.yaml")
    p.add_argument("--data", type=Path, default=Path("data/preprocess"))
    p.add_argument("--export", type=Path, help="default data/export/<variant>")
    p.add_argument("--generator", type=Path, help="default models/train_cgan/<variant>/model.pt")
    p.add_argument("--segmenter", type=Path, default=Path("models/train_seg/model.pt"))
    p.add_argument("--autoencoder", type=Path, default=Path("models/train_ae/model.pt"))
    p.add_argument("--export-metrics", type=Path, help="default metrics/export/<variant>.json")
    p.add_argument("--out", type=Path, help="default data/evaluate/<variant>")
    p.add_argument("--plots", type=Path, help="default plots/evaluate/<variant>")
    p.add_argument("--metrics", type=Path, help="default metrics/evaluate/<variant>.json")
    args = p.parse_args(argv)
    setup_logging(args.verbose)
    v = args.variant
    models = Models(
        args.generator or Path("models/train_cgan", v, "model.pt"),
        args.segmenter,
        args.autoencoder,
        args.export_metrics or Path("metrics/export", f"{v}.json"),
    )
    export_dir = args.export or Path("data/export", v)
    out = args.out or Path("data/evaluate", v)
    plots = args.plots or Path("plots/evaluate", v)
    metrics_path = args.metrics or Path("metrics/evaluate", f"{v}.json")

    def body() -> None:
        _, (common, cfg, seg_cfg) = load(args.params, "common", STAGE, "train_seg")
        manifest = export_dir / "manifest.csv"
        for path in (models.generator, models.segmenter, models.autoencoder, models.export_metrics, manifest):
            if not path.is_file():
                raise InputDataError(
                    str(path), "missing: run the earlier stages first (`dvc repro`)", "missing"
                )
        lineage = base_lineage(STAGE, cfg, {"common": common.seed, "evaluate": cfg.seed})
        lineage["params"]["common"] = common.model_dump()
        lineage["params"]["train_seg"] = seg_cfg.model_dump()
        lineage["inputs"] = {
            "generator": sha256_file(models.generator),
            "segmenter": sha256_file(models.segmenter),
            "autoencoder": sha256_file(models.autoencoder),
            "export_manifest": sha256_file(manifest),
        }
        metrics = evaluate(cfg, seg_cfg, common, v, args.data, export_dir, models, out, plots, lineage)
        write_json(metrics_path, metrics)
        u = metrics.get("utility")
        log.info(
            "%s: FD/floor %s (autoencoder), %s (segmenter); usefulness gain %s → %s",
            v,
            metrics["fidelity"]["autoencoder"]["frechet"]["over_floor"],
            metrics["fidelity"]["segmenter"]["frechet"]["over_floor"],
            u["gain"]["mean"] if u else "n/a (no masks)",
            metrics_path,
        )

    return run_main(STAGE, body)


if __name__ == "__main__":
    sys.exit(main())
