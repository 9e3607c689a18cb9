"""Where built artefacts live, how they are named, and how a build is published atomically.

Everything is keyed by a hash of its inputs, so a second run with the same
inputs finds the result and a changed input gets a new directory instead of a
stale one. Builds happen in a temporary sibling and are renamed into place, so
a crash never leaves a half-built entry that looks complete.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path


def default_cache_dir() -> Path:
    """`$GUESTAGENT_VM_CACHE`, else `${XDG_CACHE_HOME:-~/.cache}/guestagent/images` (outside the repo)."""
    explicit = os.environ.get("GUESTAGENT_VM_CACHE")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "guestagent" / "images"


def digest(*parts: str | bytes) -> str:
    """A short, stable key over several inputs (length-prefixed so ("ab","c") != ("a","bc"))."""
    h = hashlib.sha256()
    for part in parts:
        data = part.encode() if isinstance(part, str) else part
        h.update(len(data).to_bytes(8, "big"))
        h.update(data)
    return h.hexdigest()[:16]


def file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@contextlib.contextmanager
def locked(cache_dir: Path, name: str) -> Iterator[None]:
    """Serialise builds of one artefact across processes (pytest-xdist workers build once)."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    with (cache_dir / f".{name}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


@contextlib.contextmanager
def publishing(final: Path) -> Iterator[Path]:
    """Yield a scratch directory; on success rename it to `final`, on failure remove it."""
    final.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
    try:
        yield scratch
        if final.exists():
            shutil.rmtree(final)
        scratch.rename(final)
    finally:
        if scratch.exists():
            shutil.rmtree(scratch, ignore_errors=True)
