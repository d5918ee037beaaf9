"""train_seg: train the MONAI U-Net (image → lesion mask) on the preprocessed slices."""

from __future__ import annotations

import sys

from pipeline.training.seg import train_seg
from stages._training import training_main

STAGE = "train_seg"


def main(argv: list[str] | None = None) -> int:
    return training_main(
        STAGE,
        __doc__,
        train_seg,
        lambda m: f"val Dice {m['val'].get('dice_mean')}, test Dice {m['test'].get('dice_mean')}",
        argv,
    )


if __name__ == "__main__":
    sys.exit(main())
