"""demo_data: write the deterministic brain MR phantom (DICOM series + NIfTI files + lesion masks)."""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path

from pipeline.data.demo import generate_demo
from stages._common import base_lineage, load, parser, run_main, setup_logging

STAGE = "demo_data"
log = logging.getLogger(f"stages.{STAGE}")


def main(argv: list[str] | None = None) -> int:
    p = parser(STAGE, __doc__)
    p.add_argument("--out", type=Path, default=Path("data/raw/demo"), help="output folder")
    args = p.parse_args(argv)
    setup_logging(args.verbose)

    def body() -> None:
        _, (cfg,) = load(args.params, STAGE)
        start = time.perf_counter()
        cases = generate_demo(args.out, cfg, base_lineage(STAGE, cfg, {"demo_data": cfg.seed}))
        n_dicom = sum(c.format == "dicom" for c in cases)
        log.info(
            "%d cases in %.1f s: %d DICOM (%d oblique), %d NIfTI; %d with lesions → %s",
            len(cases),
            time.perf_counter() - start,
            n_dicom,
            sum(c.oblique for c in cases),
            len(cases) - n_dicom,
            sum(c.has_lesion for c in cases),
            args.out,
        )

    return run_main(STAGE, body)


if __name__ == "__main__":
    sys.exit(main())
