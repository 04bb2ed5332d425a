"""The data-removal interface: given a trained model and the training examples to forget,
return a model that approximates one trained without them (PROTOCOL.md section 7)."""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar


class Remover(ABC):
    name: ClassVar[str] = ""
    aliases: ClassVar[tuple[str, ...]] = ()
    description: ClassVar[str] = ""

    @abstractmethod
    def remove(self, run: Any, indices: Any, **options: Any) -> Any:
        """Return the updated model state after removing ``indices`` from ``run``'s data."""
