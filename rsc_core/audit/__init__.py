"""Stage 9, audit: finding rare spurious correlations nobody planted. The auditor interface
that auditor plugins implement (``auditor``), running them on a run (``runner``) and ranking
metrics against planted indices (``metrics``).

Imports the kernel and stages 1-8. The old flat module ``rsc_core.audit`` was the runner;
its names are re-exported here.
"""
from __future__ import annotations

from rsc_core.audit.runner import (AUDIT_FORMAT, DEFAULT_TOP_K, COMBINED, check_combine,
    create_auditors, rank_average, max_rank, COMBINERS, Ranking, read_ranking, AuditOutcome,
    is_audit_folder, audit_run, run_auditors, training_set)

__all__ = ['AUDIT_FORMAT', 'DEFAULT_TOP_K', 'COMBINED', 'check_combine', 'create_auditors',
           'rank_average', 'max_rank', 'COMBINERS', 'Ranking', 'read_ranking', 'AuditOutcome',
           'is_audit_folder', 'audit_run', 'run_auditors', 'training_set']
