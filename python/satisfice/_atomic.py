"""Write a file whole or not at all (policies, predictors, registries).

The bytes go to a temporary file beside the target, are flushed to disk, and only then
replace it (`os.replace` is atomic on one filesystem): a write that fails part-way (disk
full, a quota, a crash) leaves the previous file as it was, never a truncated one.
"""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Callable

TYPE_CHECKING = False  # not typing's: Router() does not import typing (cold_start.py)
if TYPE_CHECKING:  # imported when a file is written: Router() does not need pathlib
    from pathlib import Path
    from typing import BinaryIO

__all__ = ["write_atomic"]


def _fd_alias(p: Path) -> bool:
    """Whether `p` names an open file descriptor (/dev/stdout, /dev/fd/N, /proc/self/fd/N,
    or a link to one): a process's stream, however spelled, is written into, never
    replaced. Decided by where its links lead, not how it is spelled (/dev/shm holds
    ordinary files)."""
    q = os.path.abspath(p)
    for _ in range(40):
        parts = q.split("/")
        if q.startswith("/dev/fd/") or (len(parts) > 4 and parts[1] == "proc" and parts[3] == "fd"):
            return True
        if not os.path.islink(q):
            return False
        q = os.path.normpath(os.path.join(os.path.dirname(q), os.readlink(q)))
    return False


def write_atomic(
    path: str | Path,
    write: Callable[[BinaryIO], object],
    check: Callable[[Path], object] | None = None,
) -> None:
    """Call `write(f)` on a temporary file beside `path`, then `check(temporary path)` if
    given (e.g. that it reads back), then move it over `path`.

    On any failure the temporary file is removed and `path` is left untouched; an OSError
    names `path` (not the temporary file), so the message says which file was not written.
    """
    from pathlib import Path

    p = Path(path)
    try:  # what `path` is, through any symlink (/dev/stdout's leads to a pipe's fd)
        st = p.stat()
    except OSError:
        st = None
    special = st is not None and not stat.S_ISREG(st.st_mode) and not stat.S_ISDIR(st.st_mode)
    if special or (st is not None and _fd_alias(p)):
        # a FIFO, a device, a pipe, /dev/stdout redirected to a file: written into, as
        # `open("wb")` would; replacing it had put a regular file where /dev/full was, and
        # renamed a file over the one a shell had opened for >> (its earlier lines gone).
        # What `check` reads back is checked first, from a file of its own.
        import io
        import tempfile

        buf = io.BytesIO()
        write(buf)
        if check is not None:
            with tempfile.TemporaryDirectory() as d:
                probe = Path(d) / p.name
                probe.write_bytes(buf.getvalue())
                check(probe)
        try:
            with open(p, "ab") as f:  # appended: opened anew, "wb" had cut a file shell's >> kept
                f.write(buf.getvalue())
        except OSError as e:  # named, as below (/dev/full had said only "No space left")
            raise OSError(e.errno, f"{e.strerror} (not written)", str(p)) from e
        return
    # A symlink is followed, as `open("wb")` would: the file it points at is replaced.
    target = p.resolve() if p.is_symlink() else p
    mode = None if st is None else stat.S_IMODE(st.st_mode)  # an existing file keeps its mode
    tmp = target.with_name(f".{target.name}.{os.urandom(6).hex()}.tmp")
    try:
        # Created like `open("wb")` would (0o666 less the umask), not 0o600 as with
        # tempfile.mkstemp: a policy that another process (a server) reads stays readable.
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    except OSError as e:
        raise OSError(e.errno, f"{e.strerror} (cannot create a file beside it)", str(p)) from e
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        if mode is not None:
            os.chmod(tmp, mode)
        if check is not None:
            check(tmp)
        os.replace(tmp, target)
    except BaseException as e:
        with contextlib.suppress(OSError):
            tmp.unlink()
        if isinstance(e, OSError):
            raise OSError(
                e.errno, f"{e.strerror} (not written; any previous file is unchanged)", str(p)
            ) from e
        raise
    _sync_dir(target.parent)


def _sync_dir(d: Path) -> None:
    """The rename made durable: until its directory reaches the disk, a crash may bring back
    the previous file (or none), whatever was synced of the new one. Not every filesystem
    syncs a directory; the file is in place either way."""
    try:
        # (no O_DIRECTORY on Windows, where opening a directory fails: not synced)
        fd = os.open(d, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        with contextlib.suppress(OSError):
            os.fsync(fd)
    finally:
        os.close(fd)
