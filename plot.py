"""Redraw the figures and tables from saved run outputs only (experiments/plots.py).

    python plot.py all --profile quick      # from checkpoints/quick, without running anything

A figure whose runs have not ended is not drawn (the committed one is kept); one with some
missing runs is drawn from those that have ended, and says which are missing. Exit code 2 when
nothing could be drawn.
"""

from __future__ import annotations

import sys
from pathlib import Path

from experiments.plots import draw
from experiments.sets import FIGURE_NAMES, PROFILES, check_names
from utils import ArgumentParser, guarded
from utils.io import check_writable


def main(argv: list[str] | None = None) -> int:
    def body() -> int:
        p = ArgumentParser(description=__doc__)
        p.add_argument("figures", nargs="+", help=f"all (the paper's), {', '.join(FIGURE_NAMES)}")
        p.add_argument("--profile", default="full", choices=PROFILES, help="default: full")
        p.add_argument("--out_dir", type=Path, default=None, help="default: checkpoints/PROFILE")
        p.add_argument("--figs_dir", type=Path, default=Path("figs"))
        p.add_argument("--table_dir", type=Path, default=Path("docs"))
        args = p.parse_args(argv)
        check_names(args.figures)
        check_writable(args.figs_dir, "--figs_dir", folder=True)
        check_writable(args.table_dir, "--table_dir", folder=True)
        profile = PROFILES[args.profile]
        out_dir = args.out_dir or Path("checkpoints") / profile.name
        for path in draw(args.figures, profile, out_dir, args.figs_dir, args.table_dir):
            print(f"wrote {path}")
        return 0

    return guarded(body)


if __name__ == "__main__":
    sys.exit(main())
