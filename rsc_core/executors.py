"""The executor interface: run many independent jobs (for example one training run per seed)
and return their results in order. The default runs them one after another in this process;
plugins can run them in a process pool, on a cluster, or on several GPUs."""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, Callable, ClassVar, Iterable, Sequence


class Executor(ABC):
    name: ClassVar[str] = ""
    aliases: ClassVar[tuple[str, ...]] = ()
    description: ClassVar[str] = ""

    @abstractmethod
    def map(self, fn: Callable[[Any], Any], jobs: Iterable[Any]) -> Sequence[Any]:
        """Apply ``fn`` to every job; results in the order of ``jobs``."""
