"""What the training stage entry points share: arguments, torchrun, lineage, metrics file, exit codes.

Several GPUs or nodes: `torchrun --nproc_per_node N -m stages.<stage> ...` with the same arguments.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pipeline.metrics.plots import write_json
from pipeline.runtime.distributed import cleanup, dist_info_from_env, is_main
from stages._common import base_lineage, load, parser, run_main, setup_logging

#: train(cfg, common, variant, data_dir, out_dir, live_dir, dist=..., progress=..., lineage=...) -> metrics
Train = Callable[..., dict[str, Any]]


def training_main(
    stage: str,
    doc: str | None,
    train: Train,
    summary: Callable[[dict[str, Any]], str],
    argv: list[str] | None,
    variants: bool = False,
) -> int:
    """Parse arguments, train (rank 0 writes the metrics file), and map errors to exit codes. With
    ``variants`` the stage takes ``--variant`` and its default paths gain a ``<variant>`` level."""
    p = parser(stage, doc)
    if variants:
        p.add_argument("--variant", required=True, help=f"a key of {stage}.variants in params.yaml")
    p.add_argument("--data", type=Path, default=Path("data/preprocess"), help="preprocess output")
    p.add_argument("--out", type=Path, help=f"checkpoints and weights (default models/{stage}[/<variant>])")
    p.add_argument("--metrics", type=Path, help=f"default metrics/{stage}[/<variant>].json")
    p.add_argument("--live", type=Path, help=f"DVCLive folder (default dvclive/{stage}[/<variant>])")
    args = p.parse_args(argv)
    setup_logging(args.verbose)
    variant = getattr(args, "variant", None)
    tail = (variant,) if variant else ()
    out = args.out or Path("models", stage, *tail)
    metrics_path = args.metrics or (
        Path("metrics", stage, f"{variant}.json") if variant else Path("metrics", f"{stage}.json")
    )
    live = args.live or Path("dvclive", stage, *tail)
    log = logging.getLogger(f"stages.{stage}")

    def body() -> None:
        _, (common, cfg) = load(args.params, "common", stage)
        dist = dist_info_from_env(os.environ)
        lineage = base_lineage(stage, cfg, {"common": common.seed})
        lineage["params"]["common"] = common.model_dump()
        if variant:
            lineage["variant"] = variant
        try:
            metrics = train(
                cfg,
                common,
                *tail,
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
            log.info("%s → %s", summary(metrics), metrics_path)

    return run_main(stage, body)
