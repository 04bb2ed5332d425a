"""Stage 10, sweeps: many runs from one grid. The executor interface that executor plugins
implement, grid files, presets and the sweep itself.

Imports the kernel and stages 1-9. The old flat module ``rsc_core.sweeps`` was the sweep;
its names are re-exported here.
"""
from __future__ import annotations

from rsc_core.sweeps.sweep import (PlannedRun, SweepJob, FINISHED, RunReport, SweepOutcome,
    plan_sweep, make_jobs, run_sweep_job, OnReport, run_sweep, report_from_folder,
    write_sweep_record)

__all__ = ['PlannedRun', 'SweepJob', 'FINISHED', 'RunReport', 'SweepOutcome', 'plan_sweep',
           'make_jobs', 'run_sweep_job', 'OnReport', 'run_sweep', 'report_from_folder',
           'write_sweep_record']
