"""Stage 5, runs: one experiment in one folder, and many of them. The run folder (``folder``),
training a run into it (``training``), its cached scores (``scores``), checkpoints, locks,
groups of runs trained together, the results index, pooling seeds, importing a model
trained elsewhere.

Imports the kernel and stages 1-4. The old flat module ``rsc_core.runs`` is split into
``folder``, ``training`` and ``scores``; their names are re-exported here, so
``from rsc_core.runs import Run, train_run, score_run`` works.
"""
from __future__ import annotations

from rsc_core.runs.folder import (RUN_FORMAT, RUN_NAME_RESERVE, resolve_device, run_config,
    config_hash, format_number, run_slug, Run)
from rsc_core.runs.training import (TrainOutcome, find_run, train_run, folder_identity,
    check_folder, checkpoint_meta, has_weights, resumable, finish_run)
from rsc_core.runs.scores import (score_key, store_score, score_run)

__all__ = ['RUN_FORMAT', 'RUN_NAME_RESERVE', 'resolve_device', 'run_config', 'config_hash',
           'format_number', 'run_slug', 'Run', 'TrainOutcome', 'find_run', 'train_run',
           'folder_identity', 'check_folder', 'checkpoint_meta', 'has_weights', 'resumable',
           'finish_run', 'score_key', 'store_score', 'score_run']
