"""train_ae: train the denoising autoencoder on normal slices (the reference for anomaly scoring).

Several GPUs or nodes: `torchrun --nproc_per_node N -m stages.train_ae` (the same command otherwise).
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

from pipeline.metrics.plots import write_json
from pipeline.runtime.distributed import cleanup, dist_info_from_env, is_main
from pipeline.training.ae import train_ae
from stages._common import base_lineage, load, parser, run_main, setup_logging

STAGE = "train_ae"
log = logging.getLogger(f"stages.{STAGE}")


def main(argv: list[str] | None = None) -> int:
    p = parser(STAGE, __doc__)
    p.add_argument("--data", type=Path, default=Path("data/preprocess"), help="preprocess output")
    p.add_argument("--out", type=Path, default=Path(f"models/{STAGE}"), help="checkpoints, weights, overlays")
    p.add_argument("--metrics", type=Path, default=Path(f"metrics/{STAGE}.json"))
    p.add_argument("--live", type=Path, default=Path(f"dvclive/{STAGE}"), help="DVCLive folder (plots)")
    args = p.parse_args(argv)
    setup_logging(args.verbose)

    def body() -> None:
        _, (common, cfg) = load(args.params, "common", STAGE)
        dist = dist_info_from_env(os.environ)
        lineage = base_lineage(STAGE, cfg, {"common": common.seed})
        lineage["params"]["common"] = common.model_dump()
        try:
            metrics = train_ae(
                cfg,
                common,
                args.data,
                args.out,
                args.live,
                dist=dist,
                progress=sys.stderr.isatty(),
                lineage=lineage,
            )
        finally:
            cleanup()
        if is_main(dist):
            write_json(args.metrics, metrics)
            log.info("best validation reconstruction loss %s → %s", metrics["best_val_loss"], args.metrics)

    return run_main(STAGE, body)


if __name__ == "__main__":
    sys.exit(main())
