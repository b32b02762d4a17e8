"""A run's output folder (``mgwsim run --out DIR``) as one consistent set of files.

A run writes its outputs into a fresh folder beside ``DIR`` (``.DIR.mgwsim-XXXX``), each file
synced to disk, then a manifest (:data:`MANIFEST`) naming every file and its size, last; only then
is the new folder swapped in for ``DIR`` (one atomic ``renameat2(RENAME_EXCHANGE)`` where the
system has it, else two renames) and the old one removed. So ``DIR`` always holds one whole run —
the previous one or the new one, never a mix — and a run that fails (a full disk, a crash) leaves
``DIR`` as it was; its half-written folder is found and removed by the next run, with a note.
A run holds its unfinished folder (an ``flock``, dropped by the kernel however the run ends) from
the check before it starts (:func:`prepare` makes the folder) to the swap, so a second run into the
same ``DIR`` meanwhile is refused instead of removing the first one's folder.

A folder is taken to be mgwsim's when it has a manifest naming all its files, or (written before
the manifest existed) holds only the files a run writes. Any other non-empty folder is refused,
never overwritten: nothing a user gave us is lost.
"""

from __future__ import annotations

import atexit
import ctypes
import errno
import json
import os
import re
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Final

from metering.atomic import (
    PARTIAL_SUFFIX,
    AtomicWriter,
    InUseError,
    check_writable,
    fsync_directory,
    held,
    hold,
    naming,
    remove_tree,
)

MANIFEST: Final = "manifest.json"
"""The file a run writes last into its folder: the list of the run's files and their sizes."""
SCHEMA: Final = "mgwsim.run/1"
"""The manifest's schema name."""
_STAGING_INFIX: Final = ".mgwsim-"
_LEGACY_FILES: Final = re.compile(
    r"(events\.(jsonl|jsonl\.gz|parquet)|report\.png|summary\.json|invoices/\d{4}-\d{2}\.json)"
)
"""Files of a run folder written before manifests existed."""
_RENAME_EXCHANGE: Final = 2
_AT_FDCWD: Final = -100


_RESERVED: dict[Path, tuple[Path, int]] = {}
"""The staging folder :func:`prepare` made and holds for each ``out`` (by absolute path), and its handle."""


class OutputFolderError(Exception):
    """``--out`` names something that is not, and cannot become, a run folder (one line)."""


def _files_in(folder: Path) -> list[str]:
    """Every file below ``folder``, as relative POSIX paths, sorted."""
    return sorted(path.relative_to(folder).as_posix() for path in folder.rglob("*") if not path.is_dir())


def _stale_staging(out: Path) -> list[Path]:
    """Folders that interrupted runs into ``out`` were writing (never swapped in)."""
    if not out.parent.is_dir():
        return []
    return sorted(path for path in out.parent.glob(f".{out.name}{_STAGING_INFIX}*") if path.is_dir())


def foreign_file(out: Path) -> str | None:
    """The first file in ``out`` that no mgwsim run wrote (``None`` when the folder is a run's, or empty)."""
    files = _files_in(out)
    manifest = out / MANIFEST
    listed: set[str] = set()
    if manifest.is_file():
        try:
            document = json.loads(manifest.read_text(encoding="utf-8"))
            if document.get("schema") == SCHEMA:
                listed = {entry["path"] for entry in document["files"]} | {MANIFEST}
        except (ValueError, KeyError, TypeError, AttributeError):
            listed = set()
    for name in files:
        if name in listed or Path(name).name.endswith(PARTIAL_SUFFIX) or _LEGACY_FILES.fullmatch(name):
            continue
        return name
    return None


def prepare(out: Path) -> list[str]:
    """Check that ``out`` may receive a run, and remove what interrupted runs left; return notes for people.

    Raises:
        OutputFolderError: When ``out`` is a file, or a folder holding files that mgwsim did not write.
    """
    if out.exists() and not out.is_dir():
        raise OutputFolderError(f"--out {out}: is a file, not a folder")
    if out.is_dir():
        stranger = foreign_file(out)
        if stranger is not None:
            raise OutputFolderError(
                f"--out {out}: the folder holds files that mgwsim did not write (e.g. {stranger}); "
                "nothing was changed: choose another folder, or empty this one"
            )
    notes = []
    own = _RESERVED.get(out.absolute())  # (prepared before in this process: kept)
    others = [stale for stale in _stale_staging(out) if own is None or stale != own[0]]
    for stale in others:
        if held(stale):
            raise InUseError(
                f"--out {out}: another mgwsim run is writing it now (its unfinished folder {stale.name}); "
                "wait for it to end, or choose another folder"
            )
    for stale in others:
        remove_tree(stale)
        notes.append(f"an earlier run into {out} was interrupted; its unfinished folder {stale.name} was removed")
    if own is None and out.parent.is_dir():  # held from now on (no parent yet: made when the run writes)
        _RESERVED[out.absolute()] = _staging_folder(out)
    elif own is None:  # its folders are made when the run writes: that they can be is found now, not then
        check_writable(out)
    return notes


def _staging_folder(out: Path) -> tuple[Path, int]:
    """A new staging folder beside ``out``, held (:func:`~metering.atomic.hold`) through the returned handle.

    Raises:
        OSError: Naming ``out`` (not the staging folder, a name the user never gave).
    """
    try:
        staging = Path(tempfile.mkdtemp(prefix=f".{out.name}{_STAGING_INFIX}", dir=out.parent))
    except OSError as exc:
        raise naming(exc, out) from exc
    handle = os.open(staging, os.O_RDONLY)
    hold(handle)  # a run starting into ``out`` meanwhile sees this folder is being written (see prepare)
    return staging, handle


def _release_reserved() -> None:
    """Remove the staging folders :func:`prepare` made that no run wrote (it failed or stopped before)."""
    for staging, handle in _RESERVED.values():
        remove_tree(staging)
        os.close(handle)
    _RESERVED.clear()


atexit.register(_release_reserved)


def _exchange(first: Path, second: Path) -> bool:
    """Swap two folders atomically (Linux ``renameat2``); ``False`` where the system cannot."""
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):
        return False
    result = renameat2(_AT_FDCWD, os.fsencode(first), _AT_FDCWD, os.fsencode(second), _RENAME_EXCHANGE)
    if result == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.EPERM):
        return False
    raise OSError(code, os.strerror(code), str(second))


def _sync_tree(folder: Path) -> None:
    for directory in sorted({path.parent for path in folder.rglob("*")} | {folder}, key=lambda p: -len(p.parts)):
        fsync_directory(directory)


def write_folder(out: Path, write: Callable[[Path], list[Path]]) -> list[Path]:
    """Write a run's files with ``write(folder)`` into a fresh folder and swap it in for ``out``.

    ``write`` returns the files it wrote (inside the folder it was given). Returns their paths
    inside ``out`` (and the manifest). On any failure ``out`` is left as it was.

    Raises:
        OSError: Naming the file that could not be written.
    """
    out.parent.mkdir(parents=True, exist_ok=True)
    reserved = _RESERVED.pop(out.absolute(), None)
    staging, handle = reserved if reserved is not None else _staging_folder(out)
    leftover: Path | None = staging  # removed at the end: the failed new run, or the old one after a swap
    try:
        written = write(staging)
        entries: list[dict[str, str | int]] = [
            {"path": path.relative_to(staging).as_posix(), "bytes": path.stat().st_size} for path in sorted(written)
        ]
        with AtomicWriter(staging / MANIFEST) as temporary:
            temporary.write_text(json.dumps({"schema": SCHEMA, "files": entries}, indent=1) + "\n", encoding="utf-8")
        os.chmod(staging, 0o777 & ~_umask())  # mkdtemp's 0700 is for the staging only
        _sync_tree(staging)
        if not out.exists():
            os.rename(staging, out)
            leftover = None
        elif not _exchange(staging, out):
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}{_STAGING_INFIX}old-", dir=out.parent))
            os.rename(out, old / "run")
            os.rename(staging, out)
            leftover = old
        fsync_directory(out.parent)
    finally:
        if leftover is not None:
            remove_tree(leftover)
        os.close(handle)
    return [out / str(entry["path"]) for entry in entries] + [out / MANIFEST]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
