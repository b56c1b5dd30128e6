"""Argument types shared by st_runtime's command lines (st-serve, st-embed)."""

from __future__ import annotations

import argparse


def positive_int(text: str) -> int:
    """argparse type: a positive integer, with a message naming what was given."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def positive_float(text: str) -> float:
    """argparse type: a positive number (seconds), with a message naming what was given."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {value}")
    return value


def missing_extra(prog: str, exc: ImportError, extra: str) -> int:
    """Say which optional dependency a command lacks and how to install it; the exit status (2)."""
    import sys

    print(f"{prog}: {exc.name or exc} is not installed; install the extra: {extra}", file=sys.stderr)
    return 2
