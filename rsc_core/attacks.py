"""The privacy-attack interface: score how far a model reveals which examples it was trained on
(PROTOCOL.md section 8)."""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar


class Attack(ABC):
    name: ClassVar[str] = ""
    aliases: ClassVar[tuple[str, ...]] = ()
    description: ClassVar[str] = ""

    @abstractmethod
    def run(self, target: Any, shadow: Any, **options: Any) -> dict[str, Any]:
        """Fit on the shadow model, evaluate on the target; return the metrics."""
