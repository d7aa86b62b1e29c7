"""Files that survive a crash: the one atomic writer, JSONL append and read, user text files read as UTF-8, and the
one message for a full disk.

* :func:`atomic_write_bytes` (``_text`` / ``_json`` / :func:`write_jsonl`): a unique temporary file beside the
  target, fsynced, then ``os.replace``: a reader sees the old file or the new one, never half of one, and a failed
  write (a full disk, a file-size limit, Ctrl-C) removes its temporary file and leaves the old file as it was.
* :func:`append_jsonl`: one write + fsync per call; a write that fails part-way is cut back to the file's previous
  length, so a log never ends in half a line.
* :func:`read_utf8` / :func:`read_jsonl`: a user's file read as UTF-8 (a leading byte-order mark accepted), errors
  naming the file, the line and what was expected.
* :class:`DiskFullError`: what a write that ran out of space (``ENOSPC``, a quota) or hit the process's file-size
  limit (``EFBIG``, ``ulimit -f``) raises instead: one line naming the path, the bytes it needed and the free space.

Imports nothing from inpo.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import resource
import shutil
import tempfile
from pathlib import Path

__all__ = ["DiskFullError", "as_disk_full", "check_free_space", "fsync_dir", "atomic_write_bytes", "atomic_write_text",
           "atomic_write_json", "write_jsonl", "append_jsonl", "sha256_file", "check_input_file", "read_utf8", "iter_jsonl", "read_jsonl", "BOM"]

BOM = "\ufeff"
_FULL_ERRNOS = {errno.ENOSPC, errno.EFBIG, getattr(errno, "EDQUOT", errno.ENOSPC)}
# How the Rust writers (safetensors) spell the same errors in their messages.
_FULL_TEXTS = ("No space left on device", "File too large", "Disk quota exceeded", "os error 28", "os error 27",
               "os error 122")


class DiskFullError(OSError):
    """A write failed for lack of space or over the file-size limit; nothing half-written was left in place.
    ``str()`` is the message alone (no ``[Errno N]`` prefix): it is what the command line prints."""

    def __str__(self) -> str:
        return str(self.strerror)


def _free_bytes(path: Path) -> int | None:
    base = Path(path)
    while not base.exists() and base != base.parent:
        base = base.parent
    try:
        return shutil.disk_usage(base).free
    except OSError:
        return None


def _size(n: int | None) -> str:
    if n is None:
        return "unknown"
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"


def _file_size_limit() -> int | None:
    soft = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
    return None if soft == resource.RLIM_INFINITY else soft


def _full_message(path, need: int | None, *, too_large: bool) -> str:
    what = f"writing {str(path)!r}" + (f" (about {_size(need)})" if need else "")
    if too_large:
        return (f"{what} failed: a file would exceed this process's file-size limit (ulimit -f: "
                f"{_size(_file_size_limit())}); raise the limit and run again")
    return (f"{what} failed: no space left on the device ({_size(_free_bytes(Path(path)))} free); free "
            f"{_size(need) if need else 'some space'} there, or write elsewhere, and run again")


def as_disk_full(exc: BaseException, path, need: int | None = None) -> DiskFullError | None:
    """``exc`` as a :class:`DiskFullError` about ``path`` when it is a full disk / quota / file-size-limit error
    (an OSError's errno, or the same error in a library's message), else None."""
    if isinstance(exc, DiskFullError):
        return exc
    code = getattr(exc, "errno", None)
    text = str(exc)
    if code not in _FULL_ERRNOS and not any(t in text for t in _FULL_TEXTS):
        return None
    too_large = code == errno.EFBIG or "File too large" in text or "os error 27" in text
    return DiskFullError(errno.EFBIG if too_large else errno.ENOSPC, _full_message(path, need, too_large=too_large))


def check_free_space(path, need: int, what: str = "the write") -> None:
    """Raise :class:`DiskFullError` before writing when the filesystem holding ``path`` has less than ``need``
    bytes free (``need`` over the file-size limit too: a file of that size could not be written)."""
    free = _free_bytes(Path(path))
    if free is not None and need > free:
        raise DiskFullError(errno.ENOSPC, f"{what} {str(path)!r} needs about {_size(need)}, and only {_size(free)} "
                                          f"is free there; free some space, or write elsewhere, and run again")


def fsync_dir(path) -> None:
    """fsync a directory (its entries: a rename into it is durable); a no-op where directories cannot be opened."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path, data: bytes) -> Path:
    """Write ``path`` through a unique temporary file + fsync + ``os.replace`` (the file gets the permissions
    ``open`` would give it). On any failure the temporary file is removed and ``path`` is unchanged; a full disk
    raises :class:`DiskFullError`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        try:
            _write_all(fd, data)
        finally:
            os.close(fd)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600
        os.replace(tmp, path)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        full = as_disk_full(exc, path, len(data))
        if full is not None:
            raise full from None
        raise
    fsync_dir(path.parent)
    return path


def atomic_write_text(path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path, obj, **dumps_kw) -> Path:
    return atomic_write_text(path, json.dumps(obj, **dumps_kw))


def write_jsonl(path, records, **dumps_kw) -> Path:
    """The whole file at once, atomically: one JSON record per line (``ensure_ascii=False`` unless given)."""
    dumps_kw.setdefault("ensure_ascii", False)
    return atomic_write_text(path, "".join(json.dumps(r, **dumps_kw) + "\n" for r in records))


def append_jsonl(path, records: list[dict] | dict) -> Path:
    """Append records as JSON lines (sorted keys); one write + fsync, so a crash never leaves half a line. A write
    that fails (a full disk) is cut back to the previous end of the file and raises :class:`DiskFullError`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(records, dict):
        records = [records]
    data = "".join(json.dumps(r, sort_keys=True, default=str) + "\n" for r in records).encode("utf-8")
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
    try:
        start = os.lseek(fd, 0, os.SEEK_END)
        try:
            _write_all(fd, data)
        except BaseException as exc:
            _truncate(fd, start)
            full = as_disk_full(exc, path, len(data))
            if full is not None:
                raise full from None
            raise
    finally:
        os.close(fd)
    return path


def _write_all(fd: int, data: bytes) -> None:
    """Every byte of ``data`` to ``fd``, then fsync; unbuffered, so a failure leaves nothing queued for a close."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]
    os.fsync(fd)


def _truncate(fd: int, size: int) -> None:
    try:
        os.ftruncate(fd, size)
    except OSError:
        pass


def sha256_file(path, chunk: int = 1 << 24) -> str:
    """The sha256 of a file's bytes, read in chunks (a model's weights never sit in memory twice)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def check_input_file(path, what: str, expected: str) -> Path:
    """``path`` as a Path when it is a file; FileNotFoundError, or ValueError for a folder, naming ``what``."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{what} {str(path)!r} is a folder, not a file (expected {expected})")
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: {str(path)!r} (expected {expected})")
    return path


def read_utf8(path, *, what: str = "file") -> str:
    """The text of ``path`` without a leading byte-order mark; a file that is not UTF-8 raises ValueError naming
    the file, line and column."""
    data = Path(path).read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        col = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
        raise ValueError(f"{what} {str(path)!r}: line {line}, column {col}: not valid UTF-8 (byte "
                         f"0x{data[exc.start]:02x}); save the file as UTF-8") from None
    return text.removeprefix(BOM)


def iter_jsonl(path, *, what: str = "JSONL file"):
    """``(where, record)`` for every non-blank line of ``path`` (``where`` is ``"file:line"``); ValueError naming
    ``file:line`` for a line that is not JSON."""
    for lineno, line in enumerate(read_utf8(path, what=what).splitlines(), 1):
        if not line.strip():
            continue
        where = f"{path}:{lineno}"
        try:
            yield where, json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{where}: invalid JSON ({exc.msg})") from None


def read_jsonl(path, *, what: str = "JSONL file") -> list:
    """Every non-blank line of ``path`` parsed as JSON (see :func:`iter_jsonl`)."""
    return [record for _, record in iter_jsonl(path, what=what)]
