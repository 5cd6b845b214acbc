"""Crash-safe file writes: write to a temporary file in the destination folder, then rename.

Every artifact autotimm-deploy writes goes through :func:`atomic_open`: the bytes go to
``<folder>/.autotimm-tmp-<name>.XXXX`` (:data:`TMP_PREFIX`), are fsync'd, and the file is renamed onto
its final name, after which the folder is fsync'd too.  A process killed at any point (SIGKILL, OOM,
power loss) leaves each destination file either in its previous complete version or absent, plus at
most a temporary file, which the next run removes (:func:`cleanup_tmp`).  Files that describe other
files (``manifest.json``, an engine's sidecar) are removed with :func:`remove_file` before the files
they describe are replaced, and written after them.  ``scripts/kill_test.py`` checks all of this by
killing exports at random points.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import IO, Iterator, List, Optional

TMP_PREFIX = ".autotimm-tmp-"


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "wb") -> Iterator[IO]:
    """Open a temporary file next to ``path``; on success it is fsync'd and renamed onto ``path``.

    If the block raises (or the process dies), ``path`` keeps its previous content or stays absent.

    >>> import tempfile, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> with atomic_open(d / "a.txt", "w") as f:
    ...     _ = f.write("hello")
    >>> (d / "a.txt").read_text()
    'hello'
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=TMP_PREFIX + path.name + ".", dir=path.parent)
    umask = os.umask(0)
    os.umask(umask)
    try:
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; artifacts get the usual permissions
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)  # the rename itself survives a power loss before the next write
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_open(path, "wb") as f:
        f.write(data)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    atomic_write_bytes(path, text.encode("utf-8"))


def _fsync_dir(folder: Path) -> None:
    """fsync a folder so that renames and unlinks in it are durable (best effort: not on Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def remove_file(path: str | os.PathLike) -> bool:
    """Remove ``path`` if it exists, durably (the folder is fsync'd); True if it existed.

    Used to drop a file that describes others (a manifest, an engine sidecar) *before* those others
    are replaced, so that a crash in between never leaves a description next to files it does not match.
    """
    path = Path(path)
    try:
        path.unlink()
    except FileNotFoundError:
        return False
    _fsync_dir(path.parent)
    return True


def cleanup_tmp(folder: str | os.PathLike, max_age_s: Optional[float] = None) -> List[Path]:
    """Remove the temporary files (:data:`TMP_PREFIX`) a killed writer left in ``folder``.

    ``max_age_s``: only those not modified for that many seconds, so that a writer still running
    in another process is not disturbed; None removes them all.  Returns the removed paths.

    >>> import tempfile, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> _ = (d / (TMP_PREFIX + "model.onnx.x1")).write_bytes(b"partial")
    >>> [p.name for p in cleanup_tmp(d, max_age_s=3600)], [p.name for p in cleanup_tmp(d)]
    ([], ['.autotimm-tmp-model.onnx.x1'])
    """
    import time

    removed = []
    now = time.time()
    for p in Path(folder).glob(TMP_PREFIX + "*"):
        try:
            if max_age_s is not None and now - p.lstat().st_mtime < max_age_s:
                continue
            p.unlink()
            removed.append(p)
        except OSError:
            pass
    return removed


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """SHA-256 hex digest of a file, read in chunks."""
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            b = f.read(chunk)
            if not b:
                break
            h.update(b)
    return h.hexdigest()


@contextlib.contextmanager
def folder_lock(folder: Path):
    """Hold an exclusive lock on ``folder`` (``flock`` on the directory itself: no lock file is left in it) for the
    block; a second holder is refused at once with :class:`~autotimm_deploy.errors.ExportError` naming the folder,
    and touches nothing.  The lock goes with the process, also when it is killed."""
    import fcntl

    from .errors import ExportError

    fd = os.open(str(folder), os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ExportError(f"--out {folder}: another autotimm-export is writing into this folder now; wait for it "
                              "to finish or choose another --out") from None
        yield
    finally:
        os.close(fd)  # releases the lock
