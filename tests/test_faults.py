"""Faults that must leave neither a wrong number nor a stuck process (issue 25, part A): an
interrupted attack, groups that share runs, a lost scheduler, sweeps started together, huge
grids, a locked index, a deleted run folder, a killed parent, a killed removal, a file in the
way. Each test fails on the code before its fix."""
from __future__ import annotations

import json
import os
import signal
import threading
from pathlib import Path

import pytest
import torch
from test_privacy import base_args, mem_data, rsc  # noqa: F401 - mem_data is a fixture

from rsc_core import group_runs
from rsc_core.checkpoints import read_checkpoint
from rsc_core.group_runs import RunRequest, train_runs
from rsc_core.run_lock import RunLock
from rsc_core.runs import Run, find_run
from rsc_core.spec import SpuriousSpec
from rsc_core.training import TrainConfig

RECIPE = TrainConfig(arch="MLP", epochs=1, batch_size=2)


def tiny_requests(tiny_data, seeds=(0, 1)) -> list[RunRequest]:
    target = int(tiny_data["mnist"].train.labels[0])
    return [RunRequest(SpuriousSpec.build("mnist", "v8", 1, target, seed), RECIPE)
            for seed in seeds]


# --- groups that share runs take their locks in one order ---------------------------------------

def test_groups_asking_for_shared_runs_in_opposite_orders_never_deadlock(tiny_data, tmp_path,
                                                                         monkeypatch):
    """The issue's case: `rsc train --spec a --spec b` and `--spec b --spec a` while a third
    process holds b's lock. Both must finish once b is free; each group takes its locks in
    one global order, so neither can hold one lock while waiting for the other's."""
    runs = tmp_path / "runs"
    a, b = tiny_requests(tiny_data)
    path_b = find_run(b.spec, b.config, runs).path
    taken: dict[str, list[str]] = {}
    real_enter = RunLock.__enter__

    def recording_enter(self):
        taken.setdefault(threading.current_thread().name, []).append(self.run_path.name)
        return real_enter(self)

    monkeypatch.setattr(RunLock, "__enter__", recording_enter)
    waiting = threading.Semaphore(0)
    results: dict[str, list] = {}

    def train(name: str, requests: list[RunRequest]) -> None:
        results[name] = train_runs(requests, runs_dir=runs, data_dir=tiny_data.root,
                                   progress=False, device="cpu",
                                   on_wait=lambda line: waiting.release())

    holder = RunLock(path_b)
    real_enter(holder)
    threads = [threading.Thread(target=train, args=(name, order), name=name, daemon=True)
               for name, order in (("ab", [a, b]), ("ba", [b, a]))]
    try:
        for thread in threads:
            thread.start()
            assert waiting.acquire(timeout=60)  # each waits for a lock before the next starts
    finally:
        holder.__exit__(None, None, None)
    for thread in threads:
        thread.join(120)
    assert not any(thread.is_alive() for thread in threads), "the two groups deadlocked"
    assert taken["ab"][0] == taken["ba"][0]  # one global order
    outcomes = [r.outcome for name in ("ab", "ba") for r in results[name]]
    assert all(outcome is not None for outcome in outcomes)
    assert sorted(outcome.reused for outcome in outcomes) == [False, False, True, True]
    assert group_runs.lock_order([find_run(r.spec, r.config, runs) for r in (b, a)]) == \
        group_runs.lock_order([find_run(r.spec, r.config, runs) for r in (a, b)])


# --- an interrupted attack reports exactly the uninterrupted result -------------------------------

def test_a_resumed_attack_reports_exactly_the_uninterrupted_result(mem_data, tmp_path,
                                                                   monkeypatch):
    """Ctrl-C while a group saves its epoch's checkpoints (here: right after the first
    member's): the members must still all save that epoch, so that they resume in the same
    group. A member left one epoch behind trained on alone, and a group's rounding depends on
    its members: the issue's resumed `rsc mia` reported other numbers."""
    def mia(name: str):
        return rsc(*base_args(mem_data, tmp_path / name, "--arch", "LargeMLP", "--epochs", "2",
                              "--batch-size", "16", "--spec", "memmnistv20-1-0-0", "--attack",
                              "shadow-lr", "--attack", "lira-offline", "--shadows", "4",
                              "--json", "--out", str(tmp_path / name / "result")))

    plain = mia("plain")
    assert plain.exit_code == 0, plain.output
    real_save = group_runs.save_checkpoint_states

    def save_then_interrupt(*args, **kwargs):
        real_save(*args, **kwargs)
        monkeypatch.setattr(group_runs, "save_checkpoint_states", real_save)
        os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C, after the first member's checkpoint

    monkeypatch.setattr(group_runs, "save_checkpoint_states", save_then_interrupt)
    assert mia("resumed").exit_code == 130
    epochs = [read_checkpoint(path)["epoch"]
              for path in (tmp_path / "resumed" / "runs").glob("*/checkpoint.pt")]
    assert epochs == [1] * 6  # every member (target, pool shadow, 4 halves) saved epoch 1
    resumed = mia("resumed")
    assert resumed.exit_code == 0, resumed.output
    assert json.loads(resumed.output)["attacks"] == json.loads(plain.output)["attacks"]
    for name in ("scores.csv", "split.json"):
        assert (tmp_path / "resumed" / "result" / name).read_bytes() == \
            (tmp_path / "plain" / "result" / name).read_bytes()
    for folder in (tmp_path / "plain" / "runs").glob("*_keep*"):
        ours = Run(tmp_path / "resumed" / "runs" / folder.name).load_model().state_dict()
        for key, value in Run(folder).load_model().state_dict().items():
            assert torch.equal(ours[key], value), (folder.name, key)
