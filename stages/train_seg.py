"""train_seg: train the MONAI U-Net (image → lesion mask) on the preprocessed slices.

Several GPUs or nodes: `torchrun --nproc_per_node N -m stages.train_seg` (the same command otherwise).
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

from pipeline.metrics.plots import write_json
from pipeline.runtime.distributed import cleanup, dist_info_from_env, is_main
from pipeline.training.seg import train_seg
from stages._common import base_lineage, load, parser, run_main, setup_logging

STAGE = "train_seg"
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
            metrics = train_seg(
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
            log.info(
                "val Dice %s, test Dice %s → %s",
                metrics["val"].get("dice_mean"),
                metrics["test"].get("dice_mean"),
                args.metrics,
            )

    return run_main(STAGE, body)


if __name__ == "__main__":
    sys.exit(main())
