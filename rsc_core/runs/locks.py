"""One process at a time per run folder. Two identical ``rsc train`` commands (or two sweep
workers) must not both train a run: they would interleave its log and race on its checkpoint.

The claim is an OS file lock (the filelock library: ``flock`` on POSIX), held on a file beside
the run folder in ``<runs root>/.locks/``. The operating system releases it when its process
dies, however it dies, so a crashed run never leaves a stale claim behind; the next process
takes the lock and resumes from the last checkpoint. Who holds a lock is written to a
separate ``.owner`` file, so a waiting process can say which process it waits for."""
from __future__ import annotations

import datetime as _dt
import errno
import os
import socket
from pathlib import Path
from types import TracebackType
from typing import Callable

from filelock import FileLock, Timeout

from rsc_core.errors import RscError
from rsc_core.storage.paths import file_in_the_way


def runs_root_error(root: Path, exc: OSError, name: str | None = None) -> RscError:
    """One line for a runs root that cannot hold runs (read-only, under a file, disk full),
    or for a name too long for the file system (the folder is not to blame then): ``name``
    (the run's folder name) or else the file the error names."""
    if exc.errno == errno.ENAMETOOLONG:
        name = name or Path(exc.filename or "").name or "a run folder name"
        return RscError(f"the name {name!r} ({len(name.encode())} bytes) is longer than the "
                        f"file system under {root} allows; shorten what goes into it (spec, "
                        f"recipe, regulariser names)")
    reason = exc.strerror or type(exc).__name__
    blocker = (file_in_the_way(Path(os.fsdecode(exc.filename)))
               if exc.errno in (errno.EEXIST, errno.ENOTDIR) and exc.filename else None)
    if blocker is not None and Path(root) in blocker.parents:  # e.g. a file named .locks
        return RscError(f"cannot write runs under {root}: {blocker} is a file where rsc "
                        f"keeps a folder ({reason}); move or remove that file (rsc makes the "
                        f"folder again), or choose another --runs-dir")
    if blocker is not None:
        reason = f"{blocker} is a file, not a folder: {reason}"
    return RscError(f"cannot write runs under {root} ({reason}); choose a writable folder "
                    f"with --runs-dir or RSC_RUNS_DIR")


class RunLock:
    """Context manager that claims ``run_path`` for this process, waiting if another holds it.

    ``timeout`` (seconds, None = wait as long as it takes) bounds the wait; past it the error
    names the holder. ``on_wait`` receives one line when the wait begins."""

    def __init__(self, run_path: Path, *, timeout: float | None = None,
                 on_wait: Callable[[str], None] | None = None) -> None:
        self.run_path = Path(run_path)
        folder = self.run_path.parent / ".locks"
        self.lock_path = folder / f"{self.run_path.name}.lock"
        self.owner_path = folder / f"{self.run_path.name}.owner"
        self.timeout = timeout
        self.on_wait = on_wait
        self._lock: FileLock | None = None

    def holder(self) -> str:
        """Who holds the lock, as recorded by the holder (or 'another process')."""
        try:
            return self.owner_path.read_text(encoding="utf-8").strip() or "another process"
        except OSError:
            return "another process"

    def __enter__(self) -> "RunLock":
        root = self.run_path.parent
        try:
            self.lock_path.parent.mkdir(parents=True, exist_ok=True)
            lock = FileLock(str(self.lock_path))
            try:
                lock.acquire(timeout=0)
            except Timeout:
                message = (f"run {self.run_path.name} is being trained by {self.holder()}; "
                           f"waiting for it to finish")
                if self.on_wait is not None:
                    self.on_wait(message)
                try:
                    lock.acquire(timeout=-1 if self.timeout is None else self.timeout)
                except Timeout:
                    raise RscError(f"run {self.run_path.name} is still being trained by "
                                   f"{self.holder()} after {self.timeout:g} s; try again "
                                   f"when it has finished") from None
            self._lock = lock
            self.owner_path.write_text(
                f"process {os.getpid()} on {socket.gethostname()} since "
                f"{_dt.datetime.now().isoformat(timespec='seconds')}\n", encoding="utf-8")
        except OSError as exc:
            if self._lock is not None:
                self._lock.release()
                self._lock = None
            raise runs_root_error(root, exc, self.run_path.name) from None
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._lock is None:
            return
        try:
            self.owner_path.unlink()
        except OSError:
            pass
        self._lock.release()
        self._lock = None
