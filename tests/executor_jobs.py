"""Job functions for the executor tests, in a module that imports nothing heavy: worker
processes import it to run them, and a test module (torch, the CLI) would cost seconds each."""
from __future__ import annotations

import os
from pathlib import Path


def reciprocal(x: int) -> float:
    return 1 / x


def die_once(marker: str) -> str:
    """Kill this worker process the first time, succeed the second."""
    if not Path(marker).exists():
        Path(marker).write_text("died once")
        os._exit(1)
    return "second try"


def sleep_and_tell(path: str) -> None:
    """Write this worker's process id to ``path``, then work (sleep) for minutes."""
    import time

    Path(path).write_text(str(os.getpid()))
    time.sleep(300)


def current_task_key(_: int) -> str:
    """The Dask key of the task running this job."""
    from distributed import get_worker

    return str(get_worker().get_current_task())
