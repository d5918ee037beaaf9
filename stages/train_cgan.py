"""train_cgan: train one conditional GAN variant (mask → image or label → image) on the preprocessed slices.

python -m stages.train_cgan --variant mask2image   (dvc.yaml runs one stage per variant: train_cgan@<variant>)
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

from pipeline.metrics.plots import write_json
from pipeline.runtime.distributed import cleanup, dist_info_from_env, is_main
from pipeline.training.gan import train_cgan
from stages._common import base_lineage, load, parser, run_main, setup_logging

STAGE = "train_cgan"
log = logging.getLogger(f"stages.{STAGE}")


def main(argv: list[str] | None = None) -> int:
    p = parser(STAGE, __doc__)
    p.add_argument("--variant", required=True, help="a key of train_cgan.variants in params.yaml")
    p.add_argument("--data", type=Path, default=Path("data/preprocess"))
    p.add_argument("--out", type=Path, help=f"default models/{STAGE}/<variant>")
    p.add_argument("--metrics", type=Path, help=f"default metrics/{STAGE}/<variant>.json")
    p.add_argument("--live", type=Path, help=f"default dvclive/{STAGE}/<variant>")
    args = p.parse_args(argv)
    setup_logging(args.verbose)
    out = args.out or Path("models") / STAGE / args.variant
    metrics_path = args.metrics or Path("metrics") / STAGE / f"{args.variant}.json"
    live = args.live or Path("dvclive") / STAGE / args.variant

    def body() -> None:
        _, (common, cfg) = load(args.params, "common", STAGE)
        dist = dist_info_from_env(os.environ)
        lineage = base_lineage(STAGE, cfg, {"common": common.seed})
        lineage["params"]["common"] = common.model_dump()
        lineage["variant"] = args.variant
        try:
            metrics = train_cgan(
                cfg,
                common,
                args.variant,
                args.data,
                out,
                live,
                dist=dist,
                progress=sys.stderr.isatty(),
                lineage=lineage,
            )
        finally:
            cleanup()
        if is_main(dist):
            write_json(metrics_path, metrics)
            log.info(
                "%s: best val SWD %s (real-vs-real floor %s) → %s",
                args.variant,
                metrics["best_val_swd"],
                metrics["val_swd_real_floor"],
                metrics_path,
            )

    return run_main(STAGE, body)


if __name__ == "__main__":
    sys.exit(main())
