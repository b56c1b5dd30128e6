"""Progress bars over a call's inputs, as sentence-transformers draws them (tqdm, when it is installed)."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

logger = logging.getLogger("st_runtime")


def progress_bar(show: bool | None, total: int):
    """A tqdm bar over ``total`` items, or None. ``show=None``: when the st_runtime logger is at INFO or DEBUG
    (sentence-transformers' rule for its own logger)."""
    if show is None:
        show = logger.getEffectiveLevel() in (logging.INFO, logging.DEBUG)
    if not show or total == 0:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:
        warnings.warn(
            "show_progress_bar=True needs tqdm, which is not installed (pip install tqdm); encoding without a bar",
            RuntimeWarning,
            stacklevel=4,
        )
        return None
    return tqdm(total=total, desc="Encoding", unit="texts")


@contextmanager
def progress(show: bool | None, total: int) -> Iterator[Callable[[int], Any] | None]:
    """``progress_bar`` as a context: yields its ``update`` (or None) and closes the bar on the way out."""
    bar = progress_bar(show, total)
    try:
        yield bar.update if bar is not None else None
    finally:
        if bar is not None:
            bar.close()
