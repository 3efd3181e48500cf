"""Atomic file and folder writes (one helper for every file saes writes that must never be seen
half-written): write to a temporary sibling, fsync, then rename over the target.

Replacing a folder (:func:`atomic_directory`) keeps a complete folder findable at every instant:

* Where the OS can swap two paths atomically (Linux ``renameat2(RENAME_EXCHANGE)``, on ext4, xfs,
  btrfs, tmpfs, ...), one exchange puts the new folder in place; the old one, now under the
  temporary name, is deleted.
* Elsewhere, three renames: temporary -> ``.<name>.new``, ``<name>`` -> ``.<name>.old``,
  ``.<name>.new`` -> ``<name>``. Between the last two there is no ``<name>``, so readers look it up
  through :func:`readable_directory` (``<name>``, else ``.<name>.new``, else ``.<name>.old``) and
  the next write finishes the interrupted swap first. Both siblings are complete whenever they
  exist: each is made by renaming a complete folder and is renamed away before it is deleted.

Temporary names (``.<name>-*``) are never read; a crash can leave one behind.
"""

from __future__ import annotations

import ctypes
import errno
import os
import secrets
import shutil
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Callable, Iterator

_AT_FDCWD = -100
_RENAME_EXCHANGE = 2
_UNSUPPORTED = {errno.ENOSYS, errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP}


def _fsync_dir(folder: Path) -> None:
    """Make a rename inside ``folder`` durable (no-op where directories cannot be opened)."""
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


def atomic_write(path: str | Path, write: Callable[[IO[bytes]], None]) -> Path:
    """Create or replace ``path`` with what ``write(file)`` writes to a binary file; readers see
    the old file or the whole new one, never a part. Returns ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    """``atomic_write`` of UTF-8 text."""
    return atomic_write(path, lambda f: f.write(text.encode("utf-8")))


def _load_renameat2() -> Callable[..., int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2  # glibc >= 2.28, musl >= 1.2.3
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    fn.restype = ctypes.c_int
    return fn


_renameat2 = _load_renameat2()


def exchange(a: Path, b: Path) -> bool:
    """Swap the existing paths ``a`` and ``b`` in one atomic step; False (nothing changed) where
    the OS, libc or filesystem cannot."""
    if _renameat2 is None:
        return False
    if _renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in _UNSUPPORTED:
        return False
    raise OSError(err, os.strerror(err), str(a), None, str(b))


def _siblings(folder: Path) -> tuple[Path, Path]:
    """``(.<name>.new, .<name>.old)``: the stand-ins of ``folder`` during a rename swap."""
    return folder.with_name(f".{folder.name}.new"), folder.with_name(f".{folder.name}.old")


def readable_directory(folder: str | Path) -> Path | None:
    """The complete folder to read for ``folder``: itself, else the stand-in left by an
    interrupted replacement (see the module doc); None when there is none."""
    folder = Path(folder)
    return next((p for p in (folder, *_siblings(folder)) if p.is_dir()), None)


def stands_in_for(path: str | Path) -> str:
    """The name of the folder ``path`` stands in for (``sae`` for ``.sae.new``), else its name."""
    name = Path(path).name
    for suffix in (".new", ".old"):
        if name.startswith(".") and name.endswith(suffix) and len(name) > len(suffix) + 1:
            return name[1:-len(suffix)]
    return name


def _discard(path: Path, prefix: str) -> None:
    """Delete folder ``path``, renamed away first so no reader takes a half-deleted one."""
    if path.exists():
        trash = path.with_name(f"{prefix}{secrets.token_hex(6)}.trash")
        os.replace(path, trash)
        shutil.rmtree(trash, ignore_errors=True)


def _settle(folder: Path, prefix: str) -> None:
    """Finish a rename swap of ``folder`` that a crash interrupted and drop stale stand-ins."""
    new, old = _siblings(folder)
    if not folder.exists():
        if new.exists():
            os.replace(new, folder)
        elif old.exists():
            os.replace(old, folder)
        else:
            return
        _fsync_dir(folder.parent)
    _discard(new, prefix)  # never committed: readers saw ``folder``
    _discard(old, prefix)


def _fsync_tree(folder: Path) -> None:
    entries = sorted(folder.rglob("*"))
    for file in entries:
        if file.is_file():
            with open(file, "rb") as f:
                os.fsync(f.fileno())
    for sub in [*(p for p in entries if p.is_dir()), folder]:
        _fsync_dir(sub)


@contextmanager
def atomic_directory(folder: str | Path, replace: bool = True) -> Iterator[Path]:
    """Yield an empty temporary sibling of ``folder`` to fill; on a clean exit it is fsynced and
    swapped in for ``folder`` (see the module doc), or with ``replace=False`` an existing
    ``folder`` is kept and the new one dropped (another process finished first). On an exception
    nothing changes; at no instant is there no complete ``folder`` (or stand-in) to read."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    prefix = f".{folder.name}-"
    tmp = Path(tempfile.mkdtemp(prefix=prefix, dir=folder.parent))
    try:
        yield tmp
        _fsync_tree(tmp)
        _settle(folder, prefix)
        if not folder.exists():
            try:
                os.replace(tmp, folder)
            except OSError:
                if replace or not folder.exists():
                    raise
                return  # another process finished first: keep its folder
        elif not replace:
            return
        elif not exchange(tmp, folder):  # exchanged: ``tmp`` now holds the old folder
            new, old = _siblings(folder)
            os.replace(tmp, new)
            _fsync_dir(folder.parent)
            os.replace(folder, old)  # readers take ``new`` until the next line
            os.replace(new, folder)
            _fsync_dir(folder.parent)
            _discard(old, prefix)
        _fsync_dir(folder.parent)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
