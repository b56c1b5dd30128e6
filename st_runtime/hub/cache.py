"""Model names and the export cache's layout on disk.

    $ST_RUNTIME_CACHE (default ~/.cache/st-runtime)/
      models--ORG--NAME/
        refs/REVISION                 the commit REVISION last resolved to (read when the hub cannot be asked)
        COMMIT/SETTINGS/              one exported or downloaded folder (manifest.json and the files it lists)
        COMMIT/.SETTINGS.lock         held while that folder is made, so concurrent loads make it once
        COMMIT/SETTINGS.log           st-export's output for that folder

SETTINGS names how the folder was made: ``export-fmt3-opset17-fp32+opt+int8`` (exported here by st-export: the
manifest format of this st-runtime, the opset and the variants) or ``hub-all`` / ``hub-int8`` (downloaded from a
repository st-export pushed: every variant, or the one asked for). A folder is only ever moved into place
complete (by rename), so whatever exists under its final name can be served.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from ..manifest import MANIFEST_NAME

# Short names from the sentence-transformers model table live under this organisation (st-export's rule too).
DEFAULT_ORG = "sentence-transformers"
_REPO_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?")
_COMMIT = re.compile(r"[0-9a-f]{40}")


def hub_id_for(name: str) -> str:
    """``all-MiniLM-L6-v2`` -> ``sentence-transformers/all-MiniLM-L6-v2``; an ``org/name`` id is kept."""
    return name if "/" in name else f"{DEFAULT_ORG}/{name}"


def repo_id_of(model: object) -> str | None:
    """The hub id ``model`` names, or None when it is a folder: any ``os.PathLike``, and any string naming an
    existing path or written as one (``./x``, ``/x``, ``~/x``, ``a/b/c``). ``hf://org/name`` is always a name."""
    if not isinstance(model, str):
        return None
    text = model
    if text.startswith("hf://"):
        text = text[len("hf://") :].strip("/")
        if not _REPO_ID.fullmatch(text):
            from ..errors import ModelNameError

            raise ModelNameError(f"{model!r} is not a hub id: write hf://ORG/NAME (or hf://NAME for {DEFAULT_ORG}).")
        return hub_id_for(text)
    if text.startswith((".", "/", "~")) or os.path.exists(os.path.expanduser(text)) or not _REPO_ID.fullmatch(text):
        return None
    return hub_id_for(text)


def cache_root() -> Path:
    """``$ST_RUNTIME_CACHE``, else ``$XDG_CACHE_HOME/st-runtime``, else ``~/.cache/st-runtime``."""
    explicit = os.environ.get("ST_RUNTIME_CACHE")
    if explicit:
        return Path(explicit).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join("~", ".cache")
    return Path(base).expanduser() / "st-runtime"


def repo_dir(repo_id: str, root: Path | None = None) -> Path:
    return (root or cache_root()) / ("models--" + repo_id.replace("/", "--"))


def is_commit(revision: str | None) -> bool:
    return revision is not None and _COMMIT.fullmatch(revision) is not None


def write_ref(repo_id: str, revision: str | None, commit: str) -> None:
    """Remember what ``revision`` (None: main) resolved to, for loads that cannot ask the hub."""
    if is_commit(revision):
        return
    ref = repo_dir(repo_id) / "refs" / (revision or "main")
    if ref.is_file() and ref.read_text().strip() == commit:
        return
    ref.parent.mkdir(parents=True, exist_ok=True)
    tmp = ref.with_name(f".{ref.name}.{os.getpid()}")
    tmp.write_text(commit)
    os.replace(tmp, ref)


def read_ref(repo_id: str, revision: str | None) -> str | None:
    """The commit ``revision`` resolved to when last asked (a commit hash is its own), or None."""
    if revision is not None and is_commit(revision):
        return revision
    ref = repo_dir(repo_id) / "refs" / (revision or "main")
    return ref.read_text().strip() if ref.is_file() else None


@dataclass(frozen=True)
class Entry:
    """One folder of the cache."""

    repo_id: str
    commit: str
    settings: str
    path: Path

    @property
    def origin(self) -> str:
        return "downloaded" if self.settings.startswith("hub-") else "exported"

    def size(self) -> int:
        return sum(f.stat().st_size for f in self.path.iterdir() if f.is_file())


def entry_path(repo_id: str, commit: str, settings: str) -> Path:
    return repo_dir(repo_id) / commit / settings


def complete(path: Path) -> bool:
    return (path / MANIFEST_NAME).is_file()


def entries(repo_id: str | None = None) -> list[Entry]:
    """Every complete folder in the cache (of ``repo_id`` only, when given), newest first."""
    root = cache_root()
    repos = [repo_dir(repo_id)] if repo_id else sorted(root.glob("models--*"))
    found = []
    for rdir in repos:
        rid = rdir.name[len("models--") :].replace("--", "/", 1)
        for cdir in (c for c in rdir.iterdir() if is_commit(c.name)) if rdir.is_dir() else ():
            for sdir in cdir.iterdir():
                if sdir.is_dir() and not sdir.name.startswith(".") and complete(sdir):
                    found.append(Entry(rid, cdir.name, sdir.name, sdir))
    return sorted(found, key=lambda e: (e.path / MANIFEST_NAME).stat().st_mtime, reverse=True)


def remove(repo_id: str, commit: str | None = None) -> list[Path]:
    """Remove the cached folders of ``repo_id`` (of one commit, when given); the removed folders."""
    gone = [e.path for e in entries(repo_id) if commit is None or e.commit.startswith(commit)]
    for path in gone:
        shutil.rmtree(path)
    if commit is None and repo_dir(repo_id).is_dir():
        shutil.rmtree(repo_dir(repo_id))
    return gone


@contextlib.contextmanager
def locked(path: Path, on_wait: Callable[[], None]) -> Iterator[None]:
    """Hold an exclusive lock on ``path.lock`` (a file lock: other processes wait, and the lock goes when its holder
    dies, even by kill -9). ``on_wait`` runs once when another process holds it."""
    import fcntl

    lock = path.with_name(f".{path.name}.lock")
    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            on_wait()
            fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clear_leftovers(path: Path) -> None:
    """Remove what a make of ``path`` killed mid-way left beside it: ``.NAME.partial-PID`` folders (st-export's
    and the download's) of processes that are gone. Called under the folder's lock."""
    for d in path.parent.glob(f".{path.name}.partial-*"):
        pid = d.name.rsplit("-", 1)[-1]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(d)
