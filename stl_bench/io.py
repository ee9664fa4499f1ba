"""The one way stl-bench writes a file: whole or not at all.

Every result (checkpoints, CSVs, cells, ONNX files, engines, images of a corrupted
tree, label maps) goes through `atomic_path`: a temporary file in the destination's
own folder (a rename is atomic only within one file system), flushed and fsynced,
given the mode a plain `open()` would have given it, renamed over the destination,
and then the folder is fsynced so the rename itself survives a power cut. A killed
job therefore leaves either the old file or the new one, never half of one; what it
can leave is a temporary, which `remove_stale_temporaries` finds by its name.

Modes: a new file follows the umask (mkstemp's 0600 would make shared results
private); a replaced file keeps the mode it had (a 0644 leaderboard stays 0644).
A folder that cannot be written is reported as an `StlBenchError` naming it, before
anything is written.
"""
from __future__ import annotations

import itertools
import os
import shutil
import signal
import stat
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, Iterator

from stl_bench.errors import StlBenchError

TEMP_MARK = ".tmp"  # every temporary is ".<name>.<random>.tmp[<suffix>]"
TEST_KILL_ENV = "STL_BENCH_TEST_KILL_AFTER"
_files_in_place = itertools.count(1)


def current_umask() -> int:
    """The process umask, read without changing it where Linux allows (thread-safe)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def fsync_folder(folder: Path) -> None:
    """Make a rename in `folder` durable; a no-op where folders cannot be opened (Windows)."""
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


def _fsync_file(path: Path) -> None:
    if not path.is_file():
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _final_mode(final: Path) -> int:
    try:
        return stat.S_IMODE(final.stat().st_mode)
    except FileNotFoundError:
        return 0o666 & ~current_umask()


def ensure_writable_folder(folder: Path, what: str = "output") -> Path:
    """Create `folder` if needed and check that files can be made in it, before any work starts."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-check.", suffix=TEMP_MARK, dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise StlBenchError(f"cannot write the {what} folder {folder} ({exc.strerror or exc}); "
                            "choose a folder you can write to") from None
    return folder


def _temp_beside(final: Path, suffix: str) -> Path:
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.", suffix=TEMP_MARK + suffix, dir=final.parent)
    except OSError as exc:
        raise StlBenchError(f"cannot write {final} ({exc.strerror or exc}); "
                            f"make {final.parent} writable or choose another output") from None
    os.close(fd)
    return Path(tmp)


@contextmanager
def atomic_path(final: Path, suffix: str = "") -> Iterator[Path]:
    """A temporary path beside `final`, renamed onto it only if the block succeeds.

    For writers that want a path (torch.save, onnx.save_model, PIL's save, a TensorRT
    serializer); `suffix` keeps an extension such writers look at.
    """
    final = Path(final)
    tmp = _temp_beside(final, suffix)
    try:
        yield tmp
        _fsync_file(tmp)
        os.chmod(tmp, _final_mode(final))
        os.replace(tmp, final)
        fsync_folder(final.parent)
        _test_kill_point()
    finally:
        if tmp.exists():
            tmp.unlink()


def _test_kill_point() -> None:
    """Tests only: `STL_BENCH_TEST_KILL_AFTER=n` SIGKILLs the process right after its n-th file
    is in place, the way a crash would, so the kill tests resume from exact, repeatable moments."""
    limit = os.environ.get(TEST_KILL_ENV)
    if limit and next(_files_in_place) == int(limit):
        os.kill(os.getpid(), getattr(signal, "SIGKILL", signal.SIGTERM))


@contextmanager
def atomic_open(final: Path, mode: str = "w", encoding: str | None = "utf-8") -> Iterator[IO[Any]]:
    """An open file whose contents replace `final` only when the block ends without error."""
    with atomic_path(final) as tmp:
        with open(tmp, mode, encoding=None if "b" in mode else encoding) as fh:
            yield fh
            fh.flush()


def write_bytes(path: Path, data: bytes) -> Path:
    with atomic_open(path, "wb") as fh:
        fh.write(data)
    return Path(path)


def write_text(path: Path, text: str) -> Path:
    with atomic_open(path, "w") as fh:
        fh.write(text)
    return Path(path)


def save_torch(obj: Any, path: Path) -> Path:
    """torch.save, whole or not at all (checkpoints are the files a kill most often cuts)."""
    import torch

    with atomic_open(path, "wb") as fh:
        torch.save(obj, fh)
    return Path(path)


def copy_file(source: Path, final: Path) -> Path:
    with atomic_path(final) as tmp:
        shutil.copyfile(source, tmp)
    return Path(final)


@contextmanager
def atomic_folder(final: Path) -> Iterator[Path]:
    """A temporary folder beside `final`, renamed onto it when the block succeeds.

    For trees that are only meaningful whole (the demo data set). An existing `final`
    must be empty (rename cannot replace a full folder); a concurrent writer that got
    there first wins and our copy is dropped.
    """
    final = Path(final)
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=TEMP_MARK, dir=final.parent))
    except OSError as exc:
        raise StlBenchError(f"cannot write {final} ({exc.strerror or exc}); "
                            f"make {final.parent} writable or choose another folder") from None
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~current_umask())
        if final.is_dir() and not any(final.iterdir()):
            final.rmdir()
        os.replace(tmp, final)
        fsync_folder(final.parent)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def is_temporary(path: Path) -> bool:
    """True for a name `atomic_path`/`atomic_folder` would give a temporary."""
    name = Path(path).name
    return name.startswith(".") and TEMP_MARK in name[1:]


def remove_stale_temporaries(folder: Path, recursive: bool = False) -> int:
    """Delete temporaries a killed run left in `folder`; returns how many.

    Call it when a job starts on a folder it owns (a run, a cell store, a corrupted
    tree): no other writer is then mid-file there.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return 0
    found = folder.rglob(".*") if recursive else folder.glob(".*")
    removed = 0
    for path in list(found):
        if not is_temporary(path):
            continue
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        removed += 1
    return removed
