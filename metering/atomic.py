"""Atomic, durable output files: written under a temporary name beside the target, renamed when whole.

Every file mgwsim writes (event logs, invoices, reports, summaries, captures, SIM maps, journals)
goes through :class:`AtomicWriter`: a reader sees the old file or the whole new one, never a part;
the data is on disk (``fsync``) before the rename, and the rename is on disk before the writer
returns. A failure — a full disk, no permission, an I/O error — leaves no temporary file behind and
is raised as an :class:`OSError` that names the *target* (not the temporary name), so the command
line can say in one line which output could not be written.
"""

from __future__ import annotations

import contextlib
import fcntl
import io
import os
import shutil
import signal
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from _typeshed import ReadableBuffer

PARTIAL_SUFFIX: Final = ".partial"
"""Suffix of the temporary file of an output being written (``.NAME.XXXX.partial`` beside it)."""
WRITE_BEHIND_BYTES: Final = 8 << 20
"""How much a :class:`WriteBehindFile` writes before it sends what it wrote to the disk."""


class WriteBehindFile(io.FileIO):
    """A file being written that sends its data to the disk as it goes, not all at the final ``fsync``.

    Left alone, the kernel holds a large output in memory and writes it out late: the writer is
    throttled once too much is waiting, and the ``fsync`` before the rename waits for the rest.
    Every :data:`WRITE_BEHIND_BYTES` this file asks the kernel to start writing what came before
    (``posix_fadvise(DONTNEED)`` starts the write-back of a range without waiting for it, and lets
    the pages already on disk go), so the disk works while the data is made. Nothing is dropped
    that is not on disk; where the call does not exist, the file is an ordinary one.
    """

    def __init__(self, path: Path) -> None:
        """Create (or truncate) ``path`` for writing."""
        super().__init__(path, "wb")
        self.written = 0
        """Bytes written so far."""
        self._sent = 0  # data before this offset was handed to the disk
        self._behind = 0  # ... and before this one, handed to it one step earlier (on disk by now, mostly)
        self._advised = hasattr(os, "posix_fadvise")

    def write(self, data: ReadableBuffer, /) -> int:
        """Write ``data``; every :data:`WRITE_BEHIND_BYTES`, start writing the file out."""
        count = super().write(data) or 0
        self.written += count
        if self.written - self._sent >= WRITE_BEHIND_BYTES and self._advised:
            try:
                os.posix_fadvise(self.fileno(), self._behind, self.written - self._behind, os.POSIX_FADV_DONTNEED)
            except OSError:  # not a file the kernel can write back early (a pipe): write it as it comes
                self._advised = False
            self._behind, self._sent = self._sent, self.written
        return count


def open_write_behind(path: Path) -> io.BufferedWriter:
    """``path`` opened for writing bytes (buffered) as a :class:`WriteBehindFile`."""
    return io.BufferedWriter(WriteBehindFile(path), buffer_size=1 << 20)


class InUseError(Exception):
    """Another process is writing this output now (one line naming it)."""


def hold(handle: int) -> None:
    """Mark the open file or folder ``handle`` as being written by this process, until it is closed.

    An advisory ``flock``: the kernel drops it when the process ends, however it ends, so an
    unfinished output that nobody holds was left by a writer that is gone (:func:`held`).
    """
    with contextlib.suppress(OSError):  # a file system without locks: the output is written all the same
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)


def held(path: Path) -> bool:
    """Whether a running process holds ``path`` (:func:`hold`): it is being written, not left over."""
    try:
        handle = os.open(path, os.O_RDONLY)
    except OSError:  # gone meanwhile, or not ours to open: nothing to take care of
        return False
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:  # a file system without locks: taken as left over, as before locks existed
        return False
    finally:
        os.close(handle)
    return False


def partial_files(target: Path) -> list[Path]:
    """Temporary files of ``target`` that an interrupted writer left beside it.

    Raises:
        InUseError: If another process is writing ``target`` now.
    """
    if not target.parent.is_dir():
        return []
    found = sorted(target.parent.glob(f".{target.name}.*{PARTIAL_SUFFIX}"))
    if any(held(path) for path in found):
        raise InUseError(f"{target}: another mgwsim is writing it now; wait for it to end, or choose another name")
    return found


STOP_SIGNALS: Final = {signal.SIGINT: "interrupted", signal.SIGTERM: "terminated"}
"""The signals a command stops on (Ctrl-C; a service manager, ``timeout``), with the word
``simulator.cli`` says when one stops it. Cleanups hold them back (:func:`stop_signals_deferred`),
and ``ray.init`` must not keep the handlers it puts on them."""


@contextlib.contextmanager
def stop_signals_deferred() -> Iterator[None]:
    """Hold back SIGINT and SIGTERM until the block ends, then handle them as they came.

    A cleanup runs while a first Ctrl-C unwinds; a second one, common when the first seems slow,
    must not cut it short and leave half a folder behind. The handlers in place stay the ones that
    handle the signals, only later. Off the main thread (where handlers cannot be set), and for a
    signal that has no Python handler, the block runs as it is.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    came: list[int] = []
    previous = {number: signal.getsignal(number) for number in STOP_SIGNALS}
    deferred = {number: handler for number, handler in previous.items() if callable(handler)}
    for number in deferred:
        signal.signal(number, lambda arrived, frame: came.append(arrived))
    try:
        yield
    finally:
        for number, handler in deferred.items():
            signal.signal(number, handler)
        for arrived in came:  # (the first handler to raise ends the replay: it stops the command)
            deferred[signal.Signals(arrived)](arrived, None)


def remove_tree(folder: Path | str) -> None:
    """Remove ``folder`` and everything in it, whole even if stopped meanwhile (what cannot be removed stays).

    A stop signal that comes while it is removed is handled once it is gone
    (:func:`stop_signals_deferred`).
    """
    with stop_signals_deferred():
        shutil.rmtree(folder, ignore_errors=True)


def fsync_directory(directory: Path) -> None:
    """Make a rename (or creation) of an entry of ``directory`` durable."""
    handle = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(handle)
    finally:
        os.close(handle)


def fsync_file(path: Path) -> None:
    """Make a file's data durable."""
    handle = os.open(path, os.O_RDONLY)
    try:
        os.fsync(handle)
    finally:
        os.close(handle)


def naming(exc: OSError, target: Path) -> OSError:
    """The same failure, naming ``target`` as the file that could not be written."""
    return OSError(exc.errno, exc.strerror or str(exc), str(target))


def check_writable(target: Path) -> None:
    """Fail now where ``target`` could not be written later (a read-only disk, a file as its folder).

    A temporary file is made where :class:`AtomicWriter` would make it (in the nearest folder of
    ``target`` that exists: the others are made when it is written) and removed at once.

    Raises:
        OSError: Naming ``target``.
    """
    folder = target.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        handle, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=PARTIAL_SUFFIX, dir=folder)
    except OSError as exc:
        raise naming(exc, target) from exc
    os.close(handle)
    Path(name).unlink(missing_ok=True)  # (another run clearing leftovers beside the same output may have)


class AtomicWriter:
    """Write a file under a temporary name beside it; rename into place only on success."""

    def __init__(self, target: Path) -> None:
        """Prepare to write ``target``."""
        self.target = target
        self.temporary = Path()
        self._handle = -1

    def __enter__(self) -> Path:
        """Return the temporary path to write to.

        Raises:
            OSError: Naming the target, when its folder cannot be made or written to.
        """
        try:
            self.target.parent.mkdir(parents=True, exist_ok=True)
            handle, name = tempfile.mkstemp(
                prefix=f".{self.target.name}.", suffix=PARTIAL_SUFFIX, dir=self.target.parent
            )
        except OSError as exc:
            raise naming(exc, self.target) from exc
        hold(handle)  # kept open until the file is in place: it is being written, not left over
        self._handle = handle
        self.temporary = Path(name)
        return self.temporary

    def __exit__(self, exc_type: object, exc: object, traceback: object) -> None:
        """Sync and rename on success; on failure remove the temporary file.

        Raises:
            OSError: Naming the target, for a failure while writing, syncing or renaming.
        """
        try:
            self._finish(exc_type, exc)
        finally:
            with contextlib.suppress(OSError):
                os.close(self._handle)

    def _finish(self, exc_type: object, exc: object) -> None:
        if exc_type is None:
            try:
                umask = os.umask(0)
                os.umask(umask)
                os.chmod(self.temporary, 0o666 & ~umask)  # as open() would have made it, not mkstemp's 0600
                fsync_file(self.temporary)
                os.replace(self.temporary, self.target)
                fsync_directory(self.target.parent)
            except OSError as failure:
                self.temporary.unlink(missing_ok=True)
                raise naming(failure, self.target) from failure
            return
        self.temporary.unlink(missing_ok=True)
        if isinstance(exc, OSError) and exc.filename in (None, str(self.temporary)):  # a failure to write it
            raise naming(exc, self.target) from exc
