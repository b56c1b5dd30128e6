from __future__ import annotations

from pathlib import Path

import pytest


class FamilyZoo:
    """Tiny models of the families outside the architecture x pooling grid, and their exports, built once."""

    def __init__(self, zoo):
        self.zoo = zoo
        self._cache: dict[tuple, tuple[Path, Path]] = {}

    def _get(self, name: str, builder, **kwargs) -> tuple[Path, Path]:
        from exporters import export_model

        key = (name, tuple(sorted((k, repr(v)) for k, v in kwargs.items())))
        if key not in self._cache:
            i = len(self._cache)
            src = builder(self.zoo.root / f"fam-{i}-{name}", **kwargs)
            out = export_model(str(src), output=self.zoo.root / f"fam-onnx-{i}-{name}", log=lambda _m: None)
            self._cache[key] = (src, out)
        return self._cache[key]

    def glove(self, **kwargs) -> tuple[Path, Path]:
        from tiny_models import build_tiny_glove

        return self._get("glove", build_tiny_glove, **kwargs)

    def static(self, **kwargs) -> tuple[Path, Path]:
        from tiny_models import build_tiny_static

        return self._get("static", build_tiny_static, **kwargs)

    def clip(self) -> tuple[Path, Path]:
        from tiny_models import build_tiny_clip

        return self._get("clip", build_tiny_clip)

    def reference(self, path: Path):
        return self.zoo.reference(path)


@pytest.fixture(scope="session")
def zoo_families(zoo) -> FamilyZoo:
    return FamilyZoo(zoo)
