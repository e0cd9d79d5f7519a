"""Atomic outputs: one lock per output, temporary siblings renamed into place, stale ones removed.

Every temporary beside an output `<parent>/<name>` is hidden and named after it:
`.<name>.tmp-<hex>` (being written), `.<name>.scratch-<hex>` (working space, e.g. a gunzipped
file), `.<name>.old-<hex>` (the previous output while it is being replaced) and `.<name>.lock`.
Only the holder of the lock creates them, so when a process takes the lock, any it finds were
left by a killed run and are removed (a `.old-` folder is moved back when the output is gone).
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

from histodetect.errors import HistodetectError

TMP_TAG = "tmp"
SCRATCH_TAG = "scratch"
OLD_TAG = "old"
LOCK_SUFFIX = ".lock"

_held: dict[str, int] = {}
"""Locks this process holds (absolute output path -> depth), so nested holders re-enter."""


def temp_sibling(path: Path, tag: str = TMP_TAG) -> Path:
    """A new hidden name beside `path`: `.<name>.<tag>-<8 hex digits>`."""
    return path.with_name(f".{path.name}.{tag}-{uuid.uuid4().hex[:8]}")


def is_temp_name(name: str) -> bool:
    """True for the name of a temporary or lock file this module makes."""
    tags = (f".{TMP_TAG}-", f".{SCRATCH_TAG}-", f".{OLD_TAG}-")
    return name.startswith(".") and (any(t in name for t in tags) or name.endswith(LOCK_SUFFIX))


def write_text_atomic(path: Path, text: str) -> None:
    """Write `text` (UTF-8) to `path` through a temporary sibling, so readers never see half.
    A lone surrogate (a file name that is not UTF-8, as the OS gives it) is written escaped."""
    write_bytes_atomic(path, text.encode("utf-8", errors="backslashreplace"))


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """Write `data` to `path` through a temporary sibling renamed into place."""
    tmp = temp_sibling(path)
    try:
        tmp.write_bytes(data)
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)


def check_replaceable_file(
    out: Path, overwrite: bool, is_ours: Callable[[Path], bool], what: str
) -> None:
    """Refuse a file --out that exists unless `overwrite` is given and it is `what` (which
    `is_ours` recognises): --overwrite only replaces what histodetect wrote.

    Raises:
        HistodetectError: --out is a folder, exists without --overwrite, or holds something else.
    """
    if out.is_dir():
        raise HistodetectError(f"--out {out} is a folder; give a file name.")
    if not out.exists():
        return
    if not overwrite:
        raise HistodetectError(f"{out} already exists; choose another --out or pass --overwrite.")
    if not is_ours(out):
        raise HistodetectError(
            f"{out} is not {what} that histodetect wrote, so --overwrite will not replace it; "
            "choose another --out (nothing was changed)."
        )


@contextlib.contextmanager
def output_lock(out: Path) -> Iterator[None]:
    """Hold the exclusive right to write `out` (a `.<name>.lock` file beside it).

    Re-entrant within a process. On first entry, temporaries of killed runs are removed. The
    lock creates the missing parent folders it needs; those still empty on release (the work
    was refused or failed before writing) are removed again, so a refused `--out a/b/run`
    leaves no `a/b` behind.

    Raises:
        HistodetectError: another process is writing `out`, or `out` names no folder (".").
    """
    if out.name in ("", ".", ".."):
        raise HistodetectError(
            f"--out {out} names no new folder; give the output a name, e.g. --out {out}/store."
        )
    key = str(out.absolute())
    if key in _held:
        _held[key] += 1
        try:
            yield
        finally:
            _held[key] -= 1
        return
    created = _missing_parents(out)
    fd = _acquire(out)
    _held[key] = 1
    try:
        remove_stale(out)
        yield
    finally:
        del _held[key]
        _lock_path(out).unlink(missing_ok=True)
        os.close(fd)
        for folder in created:  # deepest first; a folder something was written into stays
            try:
                folder.rmdir()
            except OSError:
                break


def _missing_parents(out: Path) -> list[Path]:
    """The ancestors of `out` that do not exist yet, deepest first."""
    missing = []
    parent = out.absolute().parent
    while not parent.exists() and parent != parent.parent:
        missing.append(parent)
        parent = parent.parent
    return missing


def _lock_path(out: Path) -> Path:
    return out.with_name(f".{out.name}{LOCK_SUFFIX}")


def _acquire(out: Path) -> int:
    """Open and flock the lock file; retry when it was replaced between open and flock."""
    import fcntl

    lock = _lock_path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    while True:
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:  # read-only or forbidden folder: name the output, not the lock
            raise OSError(exc.errno, exc.strerror, str(out)) from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise HistodetectError(
                f"another histodetect process is writing {out} (lock {lock}); wait for it to "
                "finish or choose another --out."
            ) from None
        with contextlib.suppress(FileNotFoundError):
            if os.path.samestat(os.fstat(fd), lock.stat()):
                return fd
        os.close(fd)  # the holder before us removed the file: lock the new one


def remove_stale(out: Path) -> None:
    """Delete temporaries of killed runs beside `out`; call only while holding its lock."""
    if not out.parent.is_dir():
        return
    prefix = f".{out.name}."
    for path in sorted(out.parent.iterdir()):
        rest = path.name[len(prefix) :] if path.name.startswith(prefix) else ""
        tag = rest.split("-", 1)[0] if "-" in rest else ""
        if tag == OLD_TAG and not out.exists():
            path.replace(out)  # killed between moving the old output aside and the new in
        elif tag in (TMP_TAG, SCRATCH_TAG, OLD_TAG):
            _remove(path)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


@contextlib.contextmanager
def scratch_dir(out: Path) -> Iterator[Path]:
    """A working folder beside `out`, removed on exit; hold the lock on `out` while using it."""
    path = temp_sibling(out, SCRATCH_TAG)
    path.mkdir()
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def move_into_place(tmp: Path, out: Path, *, replace: bool) -> None:
    """Rename the finished folder `tmp` to `out`.

    `out` may be absent or an empty folder. With `replace`, an existing `out` (which the caller
    has checked may be replaced) is moved aside, the new one moved in, and the old deleted.

    Raises:
        HistodetectError: `out` is not empty and `replace` is False.
    """
    try:
        tmp.replace(out)
        return
    except OSError as exc:
        if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST):
            raise
        if not replace:
            raise HistodetectError(
                f"{out} appeared while writing; nothing was overwritten."
            ) from exc
    old = temp_sibling(out, OLD_TAG)
    out.replace(old)
    tmp.replace(out)
    _remove(old)


@contextlib.contextmanager
def atomic_dir(out: Path, *, replace: bool = False) -> Iterator[Path]:
    """Yield a temporary folder to fill; rename it to `out` when the block ends without error.

    The lock on `out` is held throughout; on an error the temporary folder is deleted and `out`
    is left as it was. See `move_into_place` for `replace`.
    """
    with output_lock(out):
        tmp = temp_sibling(out)
        tmp.mkdir()
        try:
            yield tmp
            move_into_place(tmp, out, replace=replace)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
