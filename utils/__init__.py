"""Data, corruption, metrics and file helpers for the recovery experiments."""

import argparse


class InputError(Exception):
    """Bad user input: the CLI prints the message as one line and exits non-zero."""


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose errors are an InputError (one line and exit 2 where the caller catches it,
    not argparse's usage block) for the scripts beside denoising.py."""

    def error(self, message: str) -> None:
        raise InputError(f"{message} (see --help)")
