"""Time the self-influence auditor on a run's whole training set (issue 23; numbers in
docs/performance.md, "Self-influence auditor").

For each ``--solver`` (NAME[:key=value,...] options of the auditor), scores every training
example of ``--run`` and reports the wall time (and the auditor's own phase times: EK-FAC's
fit and scoring, Arnoldi's eigenpairs), how the solvers' rankings agree (Spearman), and,
for a planted run, the recall of the planted images in the top 100 and the AUROC. Data
loading is not timed. Besides the wall time it reports the process's CPU time, which on a
shared machine is the better measure of the work (with one thread it is the wall time the
same computation takes alone). One thread: run it with OMP_NUM_THREADS=1.

    OMP_NUM_THREADS=1 OMP_WAIT_POLICY=PASSIVE RSC_DATA_DIR=/work/shared/data \\
      python benchmarks/self_influence.py --run RUN_FOLDER --solver ekfac \\
      --solver arnoldi:rank=20,hvp_samples=5000
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

import rsc_core
from rsc_core.audit.runner import Ranking, training_set
from rsc_core.audit.metrics import ranking_metrics
from rsc_core.audit.auditor import AuditRequest
from rsc_core.named_options import parse_named_options
from rsc_core.runs.folder import Run
from rsc_core.data.subsets import training_rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, required=True)
    parser.add_argument("--solver", action="append", default=None,
                        help="solver[:key=value,...] (repeatable; default: ekfac)")
    parser.add_argument("--rows", type=int, default=None,
                        help="time on the first ROWS training examples only (a smoke test)")
    args = parser.parse_args(argv)
    run = Run.open(args.run)
    data = training_set(run)
    train = data.train
    indices = training_rows(data)
    if args.rows:
        train = type(train)(train.images[:args.rows], train.labels[:args.rows])
        indices = indices[:args.rows]
    planted = np.asarray((run.metrics or {}).get("spurious_indices") or [], dtype=np.int64)
    results, scores = [], {}
    for text in args.solver or ["ekfac"]:
        solver, options = parse_named_options(text, "solver")
        auditor = rsc_core.create("auditors", "self-influence", solver=solver, **options)
        request = AuditRequest(run.load_model(), train, data.test, indices, data.num_classes,
                               auditor.options, torch.device("cpu"))
        started, cpu = time.perf_counter(), time.process_time()
        result = auditor.audit(request)
        seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
        scores[text] = result.scores
        facts = {k: v for k, v in result.facts.items() if k != "eigenvalues"}
        ranking = Ranking(indices, train.labels.numpy(), {text: result.scores})
        results.append({"solver": text, "rows": len(indices), "seconds": seconds,
                        "cpu_seconds": cpu,
                        "facts": facts, "planted": ranking_metrics(ranking, planted).get(text)})
        print(json.dumps(results[-1]), flush=True)
    if len(scores) > 1:
        from scipy.stats import spearmanr

        names = list(scores)
        agreement = {f"{a} vs {b}": float(spearmanr(scores[a], scores[b]).statistic)
                     for i, a in enumerate(names) for b in names[i + 1:]}
        print(json.dumps({"spearman": agreement}))
    print(json.dumps({"run": run.name, "torch": torch.__version__,
                      "threads": torch.get_num_threads(), "machine": platform.processor()
                      or platform.machine()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
