"""Keeping the exporter's resident memory near one copy of the model's weights."""

from __future__ import annotations

import ctypes
import gc
import sys


def release_memory() -> None:
    """Collect what was dropped and hand the freed heap back to the system: glibc keeps freed memory
    otherwise, so one step's peak would stay resident through the next."""
    gc.collect()
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except (OSError, AttributeError):  # not glibc (musl): nothing to trim
            pass
