from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))

from helpers import HAVE_EXPORT  # noqa: E402


class TinyZoo:
    """Builds tiny sentence-transformers models and their exports once per test session."""

    def __init__(self, root: Path):
        self.root = root
        self._models: dict[tuple, Path] = {}
        self._exports: dict[tuple, Path] = {}

    @staticmethod
    def _key(arch: str, kwargs: dict) -> tuple:
        return (arch, tuple(sorted((k, repr(v)) for k, v in kwargs.items())))

    def model(self, arch: str, **kwargs) -> Path:
        from tiny_models import build_tiny

        key = self._key(arch, kwargs)
        if key not in self._models:
            self._models[key] = build_tiny(self.root / f"st-{len(self._models)}-{arch}", arch, **kwargs)
        return self._models[key]

    def export(self, arch: str, variants: tuple[str, ...] = ("opt",), **kwargs) -> Path:
        """Export (fp32 + ``variants``); int8 is left out by default because its calibration search
        takes seconds per model (tests that need it ask for it)."""
        from exporters import export_model

        key = self._key(arch, dict(kwargs, variants=variants))
        if key not in self._exports:
            src = self.model(arch, **kwargs)
            self._exports[key] = export_model(
                str(src),
                output=self.root / f"onnx-{len(self._exports)}-{arch}",
                variants=list(variants),
                log=lambda _m: None,
            )
        return self._exports[key]

    def reference(self, path: Path):
        from sentence_transformers import SentenceTransformer

        return SentenceTransformer(str(path), device="cpu").eval()


@pytest.fixture(scope="session")
def zoo(tmp_path_factory) -> TinyZoo:
    if not HAVE_EXPORT:
        pytest.skip("needs the export extra: pip install 'st-runtime[export]'")
    return TinyZoo(tmp_path_factory.mktemp("zoo"))


FIXTURES = ROOT / "tests" / "fixtures"


def fixture_copy(name: str, dest: Path) -> Path:
    """A copy of committed fixture ``name`` (tests/fixtures/make_fixtures.py), so no test can alter the repo's."""
    import shutil

    return Path(shutil.copytree(FIXTURES / name, dest / name))


@pytest.fixture(scope="session")
def fixtures_dir(tmp_path_factory) -> Path:
    """Copies of every committed fixture: NAME/export (st-export's folder) and NAME/reference.npz."""
    root = tmp_path_factory.mktemp("fixtures")
    for d in sorted(FIXTURES.iterdir()):
        if d.is_dir():
            fixture_copy(d.name, root)
    return root


@pytest.fixture(scope="session")
def tiny_bert(fixtures_dir) -> tuple[Path, Path]:
    """(sentence-transformers folder, exported folder) of the committed tiny BERT (mean pooling + Normalize,
    a small WordPiece vocabulary; fp32 and int8 graphs): no torch needed to run it."""
    return fixtures_dir / "bert" / "source", fixtures_dir / "bert" / "export"


@pytest.fixture(scope="module")
def enc(tiny_bert):
    """st_runtime encoder of the tiny BERT export."""
    from st_runtime import SentenceEncoder

    return SentenceEncoder(tiny_bert[1])


@pytest.fixture(scope="module")
def ref(zoo, tiny_bert):
    """sentence-transformers reference of the tiny BERT."""
    return zoo.reference(tiny_bert[0])
