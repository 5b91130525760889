"""The bottom layer: data, corruption, metrics, losses, observers, file helpers. Nothing here
imports from models/, tasks/ or engine/."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable


class InputError(Exception):
    """Bad user input: the CLI prints the message as one line and exits non-zero."""


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose errors are an InputError (one line and exit 2 where the caller catches it,
    not argparse's usage block) for the scripts beside denoising.py."""

    def error(self, message: str) -> None:
        raise InputError(f"{message} (see --help)")


def guarded(main: Callable[[], int], interrupted: str = "",
            failures: tuple[type[Exception], ...] = ()) -> int:  # fmt: skip
    """Every entry point's body: a bad input is one line on stderr and exit code 2, Ctrl-C one
    line (``interrupted``: how to go on) and 130, one of ``failures`` (the computation failed:
    a benchmark's run diverged) one line and 1; anything else is a bug and shows its traceback."""
    try:
        return main()
    except InputError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except failures as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"\ninterrupted{': ' + interrupted if interrupted else ''}", file=sys.stderr)
        return 130
