# The C extension st_runtime._wordpiece (st_runtime/_wordpiece.c); see st_runtime/nativetok.py.
from typing import Any

class WordPiece:
    def __init__(
        self,
        vocab: dict[str, int],
        unk_id: int,
        prefix: str,
        max_chars: int,
        lower: bool,
        clean: bool,
        added: list[str],
    ) -> None: ...
    def encode(
        self, texts: list[Any], budget: int, left: bool, head: list[int], tail: list[int], threads: int = 1
    ) -> tuple[bytes, bytes, bytes]: ...

def fill_batches(
    ids: Any,
    bounds: Any,
    order: Any,
    plan: Any,
    pad_id: int,
    left: bool,
    outs: list[tuple[Any, Any, Any | None]],
    types: Any | None,
    threads: int,
) -> None: ...
