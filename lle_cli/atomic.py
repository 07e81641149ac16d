"""The one way lle writes a file: whole or not at all.

Every output, weights file, run record, cache entry and checkpoint goes to a temporary file beside
its target (``.<name>.<random>.part``), and only a complete file is renamed (or hard-linked, to
never replace) into place, so a crash, a full disk or Ctrl-C can never leave a half-written file
under the real name. ``write_bytes_atomic`` is for bytes in memory; ``replacing`` for writers that
want a path (safetensors, Pillow, JSON dumps).
"""

from __future__ import annotations

import errno
import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .errors import OutputError, OutputExistsError

__all__ = ["write_bytes_atomic", "write_text_atomic", "replacing"]


def write_bytes_atomic(path: str | os.PathLike, data: bytes, *, overwrite: bool = False) -> None:
    """Write ``data`` so that ``path`` is either untouched or complete, never half-written.

    The bytes go to a temporary file in the same directory, are fsynced, then linked (no
    overwrite: fails if someone created ``path`` meanwhile) or renamed (overwrite) into place.
    """
    target = Path(path)
    parent = target.parent
    if not parent.is_dir():
        raise OutputError(f"{parent}: output directory does not exist; create it first")
    if target.is_dir():
        raise OutputError(f"{target}: is a directory; give a file name for the output")
    if not overwrite and os.path.lexists(target):
        raise _exists(target)

    tmp, fd = _create_temp(parent, target.name)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if overwrite:
            os.replace(tmp, target)
        else:
            _link_no_clobber(tmp, target)
    except FileExistsError:
        _unlink_quietly(tmp)
        raise _exists(target) from None
    except OSError as exc:
        _unlink_quietly(tmp)
        reason = exc.strerror or exc
        raise OutputError(f"{target}: could not be written ({reason}); check free space and permissions") from None
    except BaseException:
        _unlink_quietly(tmp)
        raise
    _fsync_dir(parent)


def _exists(target: Path) -> OutputExistsError:
    return OutputExistsError(f"{target}: already exists; pass --overwrite to replace it or choose another -o")


def _create_temp(parent: Path, name: str) -> tuple[Path, int]:
    """An exclusive, umask-respecting temporary file next to the target."""
    for _ in range(100):
        tmp = parent / f".{name}.{secrets.token_hex(4)}.part"
        try:
            return tmp, os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
        except FileExistsError:
            continue
        except PermissionError:
            raise OutputError(f"{parent}: permission denied; cannot write output there") from None
        except OSError as exc:
            raise OutputError(f"{parent}: cannot create the output there ({exc.strerror or exc})") from None
    raise OutputError(f"{parent}: cannot create a temporary file there")


def _link_no_clobber(tmp: Path, target: Path) -> None:
    """Hard-link into place (atomic, never replaces); fall back to rename where links are absent."""
    try:
        os.link(tmp, target)
    except FileExistsError:
        raise
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV, errno.EMLINK, errno.ENOSYS):
            raise
        if os.path.lexists(target):
            raise FileExistsError(errno.EEXIST, "exists", str(target)) from None
        os.replace(tmp, target)
        return
    _unlink_quietly(tmp)


def _unlink_quietly(path: Path) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def _fsync_dir(directory: Path) -> None:
    """Make the rename itself durable; not possible everywhere, so best effort."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """``write_bytes_atomic`` for UTF-8 text that replaces an earlier version (records, sidecars)."""
    write_bytes_atomic(path, text.encode("utf-8"), overwrite=True)


@contextmanager
def replacing(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary path beside ``path`` for a writer that needs a file name; on success the file
    replaces ``path`` in one rename, on any failure it is removed and ``path`` is untouched."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp, fd = _create_temp(target.parent, target.name)
    os.close(fd)
    try:
        yield tmp
        os.replace(tmp, target)
    except BaseException:
        _unlink_quietly(tmp)
        raise
