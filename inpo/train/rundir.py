"""The run directory: who may use it (an exclusive lock), whether it is an inpo run (its marker), and what the run
wrote there (the marker is also its manifest) -- so that a fresh start with ``--overwrite`` deletes exactly that.

* **Lock.** ``<run>/.inpo.lock`` is ``flock``-ed by the one trainer using the directory; a second trainer is told
  "in use" before its model loads (:func:`probe_run_lock`) and again when it claims (:func:`claim_run_dir`).
* **Marker and manifest.** ``<run>/.inpo-run`` holds a header line and then one JSON line per top-level entry the
  run created (``config.yaml``, ``metrics.jsonl``, ``checkpoints``, ``iter_000``, ``final``...), appended and
  fsynced *before* the entry is first written (:func:`record_entry`). A directory without the marker is never
  cleared; a fresh start clears only the recorded entries (:func:`clear_run_dir`): a user's own
  ``iter_backup_mine/`` or ``notes.txt`` beside them stays. A marker written by an inpo from before the manifest
  (plain text) lists nothing, so such a directory is not cleared at all (the message says how to proceed).
* **Checks before anything is written** (:func:`check_output_dir`): a file, a path under a file, a folder we may not
  write, a dangling symbolic link, a non-empty folder that is not an inpo run, a previous run (without
  ``--overwrite``), and a user's file or folder under a name the run would write into.

Limits: a file a user puts *inside* a folder the run created (say ``iter_000/my_notes.txt``) goes with that
folder; the lock is advisory (``flock``) and needs a filesystem that honours it (local disks; NFS since Linux
2.6.12 as a POSIX lock).
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

from inpo.paths import check_writable_path
from inpo.utils.io import atomic_write_text
from inpo.utils.manifest import add_to_manifest, read_manifest, unrecorded, write_manifest

__all__ = ["RUN_MARKER", "LOCK_NAME", "RunDirError", "check_output_dir", "RunLock", "release_run_locks",
           "probe_run_lock", "claim_run_dir", "clear_run_dir", "record_entry", "recorded_entries", "write_run_file"]

RUN_MARKER = ".inpo-run"  # written into every run directory: only a directory holding it is ever cleared
LOCK_NAME = ".inpo.lock"  # flock'ed by the trainer that owns the directory, for as long as it runs
_OWN_FILES = (RUN_MARKER, LOCK_NAME)
_KIND = "inpo-run"
_ABOUT = "an inpo run directory; each line below names an entry this run created: --overwrite deletes those only"
# Names a run writes at the top of its directory (iter_<t> besides): a user's entry of such a name is refused.
_RUN_NAMES = ("config.yaml", "metrics.jsonl", "checkpoints", "final", "eval_ref_responses.jsonl", "tensorboard",
              "wandb", "diverged.json")
_ITER_NAME = re.compile(r"iter_\d{3,}")


class RunDirError(ValueError):
    """The output directory cannot be used as asked (a file, not writable, not an inpo run, in use...)."""


# -- the manifest ---------------------------------------------------------------------------------------------------

def _read_marker(out: Path) -> list | None:
    """The manifest's entries, or None when the marker is missing or from before manifests (plain text)."""
    return read_manifest(Path(out) / RUN_MARKER, _KIND)


def recorded_entries(out) -> list[str]:
    """The top-level entries the run in ``out`` recorded as its own (empty for an unmarked or older directory)."""
    return _read_marker(Path(out)) or []


def _write_marker(out: Path, entries: list[str]) -> None:
    write_manifest(Path(out) / RUN_MARKER, _KIND, _ABOUT, entries)


def record_entry(out, name: str) -> Path:
    """Record the top-level entry ``name`` as this run's before it is first written; returns ``out / name``.

    A no-op in a directory without a manifest (not a claimed run directory: e.g. a checkpoint written by a test or a
    bench into a plain folder, or a run from before manifests). An entry that exists without being recorded is a
    user's: RunDirError, nothing written."""
    out = Path(out)
    entries = _read_marker(out)
    if entries is None or name in entries:
        return out / name
    if unrecorded(out, [name], entries):
        raise RunDirError(f"{str(out / name)!r} exists but was not written by this run; refusing to write into it: "
                          f"move it out of the run directory")
    add_to_manifest(out / RUN_MARKER, name)
    return out / name


def write_run_file(out, name: str, text: str) -> Path:
    """A top-level file of the run (recorded, then written atomically)."""
    return atomic_write_text(record_entry(out, name), text)


def clear_run_dir(out: Path) -> list[str]:
    """Remove what a previous run recorded in its manifest (a fresh start); everything else stays. Returns the
    entries removed. Only for a directory marked as an inpo run (``check_output_dir`` / ``claim_run_dir`` decide)."""
    out = Path(out)
    if not (out / RUN_MARKER).is_file():
        raise RunDirError(f"refusing to clear {str(out)!r}: not an inpo run directory (no {RUN_MARKER} marker)")
    entries = _read_marker(out)
    if entries is None:
        raise RunDirError(_legacy_message(out))
    removed = []
    for name in entries:
        p = out / name
        if name in _OWN_FILES:
            continue
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        elif p.exists() or p.is_symlink():
            p.unlink()
        else:
            continue
        removed.append(name)
    _write_marker(out, [])
    return removed


def _legacy_message(out: Path) -> str:
    return (f"output {str(out)!r} holds a run written by an older inpo, which did not record the files it wrote; "
            f"refusing to guess what to delete: continue it with --resume, remove it yourself, or choose another "
            f"--output")


# -- checks before anything is written --------------------------------------------------------------------------------

def _foreign_run_names(out: Path, entries: list) -> list[str]:
    """A user's entries (not in the manifest) under a name the run would write into."""
    names = [p.name for p in out.iterdir() if p.name in _RUN_NAMES or _ITER_NAME.fullmatch(p.name)]
    return unrecorded(out, names, entries)


def check_output_dir(out: Path, *, resume: bool, overwrite: bool, probe_lock: bool = True) -> None:
    """Refuse, before anything is written, an output that cannot hold a run or whose files a fresh start would
    destroy: one in use by another trainer (``probe_lock``), a file, a path under a file, a dangling link, a folder
    we may not write, a non-empty folder that is not an inpo run (no marker: e.g. ``--output .``), a previous run
    with checkpoints or ``final/`` unless ``overwrite`` (and then one that recorded nothing), and a user's entry
    named like one the run writes."""
    out = Path(out)
    try:
        check_writable_path(out, "output", folder=True)
    except ValueError as exc:
        raise RunDirError(str(exc)) from None
    if probe_lock:
        probe_run_lock(out)
    if resume or not out.is_dir():
        return
    entries = [p for p in out.iterdir() if p.name not in _OWN_FILES]
    if not entries:
        return
    if not (out / RUN_MARKER).is_file():
        shown = ", ".join(sorted(p.name for p in entries)[:5]) + (", ..." if len(entries) > 5 else "")
        raise RunDirError(f"output {str(out)!r} is not empty ({shown}) and is not an inpo run directory (no "
                          f"{RUN_MARKER} marker); refusing to delete anything in it: pass a new or empty --output")
    _check_previous_run(out, overwrite)


def _check_previous_run(out: Path, overwrite: bool) -> None:
    trained = [n for n in ("final", "checkpoints") if (out / n).is_dir() and any((out / n).iterdir())]
    if trained and not overwrite:
        raise RunDirError(f"output {str(out)!r} holds a previous run ({' and '.join(n + '/' for n in trained)}); "
                          f"continue it with --resume, pass --overwrite to replace it, or choose another --output")
    entries = _read_marker(out)
    if entries is None:
        raise RunDirError(_legacy_message(out))
    foreign = _foreign_run_names(out, entries)
    if foreign:
        raise RunDirError(f"output {str(out)!r} holds {', '.join(foreign)}, not written by the run there (not in its "
                          f"{RUN_MARKER} manifest), under name(s) a run writes; move them out of the way or choose "
                          f"another --output")


# -- the lock ---------------------------------------------------------------------------------------------------------

class RunLock:
    """An exclusive ``flock`` on ``<run>/.inpo.lock``: one trainer per run directory. The kernel drops the lock
    when the process dies (kill -9 included), so a lock file left behind is never stale; the file only says who
    held it last (pid, host). ``flock`` works on local filesystems and on NFS (as a POSIX lock since Linux 2.6.12)."""

    _held: list["RunLock"] = []  # this process's locks, released by release_run_locks()

    def __init__(self, path: Path, fd: int):
        self.path, self.fd = path, fd

    @classmethod
    def acquire(cls, out: Path) -> "RunLock":
        import fcntl
        import socket

        path = Path(out) / LOCK_NAME
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            error = _in_use(Path(out), fd)
            os.close(fd)
            raise error from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
        lock = cls(path, fd)
        cls._held.append(lock)
        return lock

    def release(self) -> None:
        import fcntl

        if self.fd >= 0:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = -1
        if self in RunLock._held:
            RunLock._held.remove(self)


def release_run_locks() -> None:
    """Release every run-directory lock this process holds (the end of ``run_training``, error or not)."""
    for lock in list(RunLock._held):
        lock.release()


def _in_use(out: Path, fd: int) -> RunDirError:
    holder = os.pread(fd, 4096, 0).decode("utf-8", "replace").strip() or "unknown"
    return RunDirError(f"output {str(out)!r} is in use by another inpo train ({holder}); wait for it to finish or "
                       f"choose another --output")


def probe_run_lock(out: Path) -> None:
    """Fail at once, before any model loads, when another trainer holds ``out``'s lock (creates nothing)."""
    import fcntl

    path = Path(out) / LOCK_NAME
    if not path.is_file():
        return
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:
        raise _in_use(Path(out), fd) from None
    finally:
        os.close(fd)  # closing drops the probe's shared lock


def claim_run_dir(out: Path, *, resume: bool, overwrite: bool) -> list[str]:
    """Rank 0: create ``out`` and lock it first (so that a second trainer is told "in use", whatever it finds in
    the directory), then check it under the lock, clear a previous run's recorded entries on a fresh start and
    write the marker. Returns the entries cleared. Raises :class:`RunDirError` with nothing deleted when the
    directory is not ours to use."""
    out = Path(out)
    check_output_dir(out, resume=resume, overwrite=overwrite)
    try:
        out.mkdir(parents=True, exist_ok=True)
        RunLock.acquire(out)
    except OSError as exc:
        raise RunDirError(f"output {str(out)!r}: cannot create or lock it ({exc.strerror or exc})") from None
    check_output_dir(out, resume=resume, overwrite=overwrite, probe_lock=False)  # another process may have written
    cleared = []
    if not resume and (out / RUN_MARKER).is_file():
        cleared = clear_run_dir(out)
    if not (out / RUN_MARKER).is_file():
        _write_marker(out, [])
    return cleared
