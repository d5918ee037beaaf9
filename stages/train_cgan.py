"""train_cgan: train one conditional GAN variant (mask → image or label → image) on the preprocessed slices.

dvc.yaml runs one stage per variant: train_cgan@<variant> = `python -m stages.train_cgan --variant <variant>`.
"""

from __future__ import annotations

import sys

from pipeline.training.gan import train_cgan
from stages._training import training_main

STAGE = "train_cgan"


def main(argv: list[str] | None = None) -> int:
    return training_main(
        STAGE,
        __doc__,
        train_cgan,
        lambda m: (
            f"{m['variant']}: best val SWD {m['best_val_swd']} (real-vs-real floor {m['val_swd_real_floor']})"
        ),
        argv,
        variants=True,
    )


if __name__ == "__main__":
    sys.exit(main())
