"""score_anomalies: anomaly maps and scores from the autoencoder's reconstruction error, against labels and
masks, with the intensity baseline beside them."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from pipeline.anomaly.run import score_anomalies
from pipeline.lineage.hashing import sha256_file
from pipeline.metrics.plots import write_json
from stages._common import base_lineage, load, parser, run_main, setup_logging

STAGE = "score_anomalies"
log = logging.getLogger(f"stages.{STAGE}")


def main(argv: list[str] | None = None) -> int:
    p = parser(STAGE, __doc__)
    p.add_argument("--data", type=Path, default=Path("data/preprocess"))
    p.add_argument("--model", type=Path, default=Path("models/train_ae/model.pt"))
    p.add_argument("--out", type=Path, default=Path(f"data/{STAGE}"), help="scores.csv, maps/, overlays/")
    p.add_argument("--metrics", type=Path, default=Path(f"metrics/{STAGE}.json"))
    p.add_argument("--plots", type=Path, default=Path(f"plots/{STAGE}"), help="ROC and PR curves (CSV)")
    args = p.parse_args(argv)
    setup_logging(args.verbose)

    def body() -> None:
        _, (common, cfg) = load(args.params, "common", STAGE)
        lineage = base_lineage(STAGE, cfg, {"common": common.seed})
        lineage["inputs"] = {"model": sha256_file(args.model)}
        metrics = score_anomalies(cfg, common, args.data, args.model, args.out, args.plots, lineage)
        write_json(args.metrics, metrics)
        test = {k: metrics[k].get("test", {}) for k in ("model", "baseline")}
        log.info(
            "test pixel AUROC model %s vs baseline %s; slice AUROC model %s vs baseline %s → %s",
            test["model"].get("pixel", {}).get("auroc"),
            test["baseline"].get("pixel", {}).get("auroc"),
            test["model"].get("slice", {}).get("auroc"),
            test["baseline"].get("slice", {}).get("auroc"),
            args.metrics,
        )

    return run_main(STAGE, body)


if __name__ == "__main__":
    sys.exit(main())
