"""Recover an image from sparse noise with DOP, or with the Deep Image Prior baselines; or, with
--task, from an incomplete (inpaint), downsampled (sr) or blurred (deblur, blind-deblur)
observation, with or without outliers on top (docs/METHODS.md, "Tasks").

    python denoising.py --gpu 0 --image F16 --nlevel 0.5          # the paper's default run
    python denoising.py --image astronaut --crop 128 --width 32 --num_iter 2000 --gpu cpu
    python denoising.py --observed photo.png --gpu cpu            # a photo that is already noisy
    python denoising.py --task inpaint --keep 0.5 --nlevel 0.1 --image F16   # DOP inpainting

The public code's flags (--ckpt --gpu --image --nlevel --alg --l1 --lr --lr_c --num_iter --width)
keep their names and defaults; DIP is --method dip, DIP-L1 is --method dip --l1. Outputs go to
OUT_DIR/CKPT_* (README.md, "Outputs"). Exit codes: 0 ended, 1 diverged, 2 bad input, 3 out of
memory.
"""

from __future__ import annotations

import sys
import warnings

from engine import run
from engine.config import parse
from utils import guarded


def main(argv: list[str] | None = None) -> int:
    warnings.filterwarnings("ignore", category=UserWarning, module="torch")

    def body() -> int:
        cfg = parse(argv, __doc__)
        [outcome] = run([cfg], progress=not cfg.quiet)
        return outcome.code

    return guarded(body, "the same command with --resume continues the run from its last "
                   "checkpoint")  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
