"""Stage 7, removal: deleting training images from a trained run. The remover interface that
removal plugins implement (``remover``) and removal runs (``runs``: a new run folder made from
a source run).

Imports the kernel and stages 1-5. The old flat module ``rsc_core.removal`` was the
interface; its names are re-exported here.
"""
from __future__ import annotations

from rsc_core.removal.remover import (RemovalRequest, RemovalResult, Remover)

__all__ = ['RemovalRequest', 'RemovalResult', 'Remover']
