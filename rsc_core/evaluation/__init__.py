"""Stage 3, evaluation: what a trained model does on given inputs. Batched predictions,
loss and accuracy, the spurious score, input saliency.

Imports the kernel and ``data``. The old flat module ``rsc_core.evaluation`` was
``predictions``; its names are re-exported here.
"""
from __future__ import annotations

from rsc_core.evaluation.predictions import (predict_logits, predict_proba, loss_and_accuracy)

__all__ = ['predict_logits', 'predict_proba', 'loss_and_accuracy']
