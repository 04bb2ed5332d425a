"""Membership inference end to end (``rsc mia``): split a membership dataset, train (or reuse)
the target and every shadow model the chosen attacks need as ordinary runs through the
multi-model trainer, observe each model on its examples, run the attacks, compute the metrics
and write one result folder atomically (metrics.json, scores.csv, split.json, roc.png).

Every name, option, output path and a given target run are checked before anything is trained
or written, so bad input is one error and leaves nothing behind."""
from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from rich.console import Console
from rich.progress import track

from rsc_core import registry
from rsc_core.storage.atomic import json_marks, replaced_folder, write_json, write_text
from rsc_core.privacy.attacks import (SHADOW_POOL, TARGET_HALVES, Attack, AttackOutput,
    Observations, Population)
from rsc_core.data.datasets import DatasetBundle, load_dataset
from rsc_core.errors import ConfigError, RscError
from rsc_core.evaluation.predictions import predict_logits
from rsc_core.runs.groups import DEFAULT_GROUP_SIZE, RunRequest, RunResult, train_runs
from rsc_core.json_output import finite, to_json
from rsc_core.data.membership import PREFIX, MembershipSpec, MembershipSplit, membership_split
from rsc_core.privacy.metrics import membership_metrics
from rsc_core.privacy.queries import QueryImages, control_size, query_images
from rsc_core.named_options import parse_named_options
from rsc_core.privacy.roc_figure import save_roc_plot
from rsc_core.runs.folder import Run, config_hash, resolve_device, run_config, run_slug
from rsc_core.data.subsets import TrainSubset
from rsc_core.training.trainer import TrainConfig

RESULT_FORMAT = 2  # 2: the control slice, attack options, RMIA's population


def create_attacks(names: Sequence[str], shadows: int) -> list[Attack]:
    """The attacks, each ``NAME[:key=value,...]`` (unknown names and options, repeats and too
    few shadows are one error each). One attack may be given twice with other options."""
    if not names:
        raise ConfigError("no attack given; use e.g. --attack shadow-lr (`rsc plugins` lists "
                          "the attacks)")
    attacks, seen = [], set()
    for text in names:
        name, options = parse_named_options(text, "attack")
        attack = registry("attacks").get(name).obj(shadows=shadows, **options)
        if attack.label in seen:
            raise ConfigError(f"attack {attack.label} is given twice; give each attack once")
        seen.add(attack.label)
        attacks.append(attack)
    return attacks


@dataclass(frozen=True)
class ModelSet:
    """The runs of one shadow design (or the target), and the examples each is observed on."""

    requests: list[RunRequest]
    observed: list[tuple[np.ndarray, np.ndarray]]  # per run: (original indices, member flags)


def shadow_seed(config: TrainConfig, k: int) -> TrainConfig:
    """Shadow k of a LiRA set trains with its own initialisation and batch order (training
    seed + 1 + k), as independent models would; the single pool shadow uses the target's."""
    return dataclasses.replace(config, seed=config.seed + 1 + k)


def plan_models(split: MembershipSplit, config: TrainConfig,
                attacks: Sequence[Attack]) -> dict[str, ModelSet]:
    """The target and the shadow sets the attacks need, as run requests."""
    mem = split.spec
    target_pool = split.target_pool()
    sets = {"target": ModelSet([RunRequest(mem.spurious, config, split.target_subset)],
                               [(target_pool.indices, target_pool.member)])}
    for design in dict.fromkeys(a.shadow_design for a in attacks):
        count = max(a.num_shadows for a in attacks if a.shadow_design == design)
        if design == SHADOW_POOL:
            pool = split.shadow_pool()
            sets[design] = ModelSet([RunRequest(mem.clean, config, split.shadow_subset)],
                                    [(pool.indices, pool.member)])
            continue
        spec, source = ((mem.spurious, target_pool.indices) if design == TARGET_HALVES
                        else (mem.clean, split.clean_target_pool()))
        halves = split.halves(source, count)
        sets[design] = ModelSet(
            [RunRequest(spec, shadow_seed(config, k), TrainSubset.keeping(rows))
             for k, rows in enumerate(halves)],
            [(target_pool.indices, np.isin(target_pool.indices, rows)) for rows in halves])
    return sets


def check_target_run(run: Run, split: MembershipSplit) -> TrainConfig:
    """A given target run must be a finished run of exactly the target's training data; its
    recipe is then the recipe of every shadow model."""
    if not run.finished:
        raise RscError(f"target run {run.path} has not finished; train it first")
    expected = split.target_subset
    subset = run.subset
    if run.spec != split.spec.spurious or subset is None or \
            not np.array_equal(subset.rows(split.labels.size), expected.rows(split.labels.size)):
        what = run.spec.name + (f" ({subset.tag()})" if subset is not None else
                                " (the whole training set)")
        raise RscError(f"target run {run.path.name} was trained on {what}, not on the target "
                       f"training set of {split.spec.name} ({split.spec.spurious.name} "
                       f"({expected.tag()})); omit --target-run to train the right one")
    return run.train_config


def result_name(mem: MembershipSpec, config: TrainConfig, attacks: Sequence[Attack],
                control: int | None = None) -> str:
    """``memmnistv20-3-0-0_ce-tor-LargeMLP_adam-..._<hash of recipe, attacks, control>``."""
    key = {"spec": mem.name, "train": config.as_dict(), "format": RESULT_FORMAT,
           "attacks": [[a.name, a.num_shadows, a.options] for a in attacks], "control": control}
    return f"{PREFIX}{run_slug(mem.spurious, config)}-{config_hash(key)}"


def check_output(out: Path, is_result: Callable[[Path], bool] | None = None,
                 command: str = "rsc mia") -> Path:
    """The result folder must be creatable (its parent a writable folder), and an existing
    folder is replaced only if it is empty or an earlier result of ``command`` (``is_result``
    says; default: an ``rsc mia`` result), never a folder of anything else (``--out .`` must
    not replace the current folder)."""
    out = Path(out)
    is_result = is_result or is_result_folder
    if out.exists() and not out.is_dir():
        raise ConfigError(f"cannot write results to {out}: it is a file; choose a folder path")
    if out.is_dir() and any(out.iterdir()) and not is_result(out):
        raise ConfigError(f"cannot write results to {out}: it is a folder that holds other "
                          f"files, not an earlier {command} result; choose a new --out")
    parent = next(p for p in out.absolute().parents if p.exists())
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise ConfigError(f"cannot write results under {parent}: not a writable folder; "
                          f"choose another --out")
    return out


def is_result_folder(path: Path) -> bool:
    """Whether ``path`` holds a result this module wrote (its metrics.json says so)."""
    return json_marks(path, "metrics.json", "rsc_mia")


@dataclass(frozen=True)
class MiaResult:
    folder: Path
    metrics: dict[str, Any]


def run_mia(mem: MembershipSpec, config: TrainConfig, attacks: Sequence[Attack], out: Path,
            *, target_run: Run | None = None, **options: Any) -> MiaResult:
    """Train or reuse every model the attacks need, attack the target, write ``out``.
    ``options``: those of ``run_mia_many``."""
    return run_mia_many([(mem, out)], config, attacks, target_run=target_run, **options)[0]


def run_mia_many(jobs: Sequence[tuple[MembershipSpec, Path]], config: TrainConfig,
                 attacks: Sequence[Attack], *, runs_dir: str | Path | None = None,
                 data_dir: str | Path | None = None, download: bool | None = None,
                 device: str = "auto", progress: bool = True,
                 group_size: int = DEFAULT_GROUP_SIZE, target_run: Run | None = None,
                 control: int | None = None,
                 on_stage: Callable[[str], None] = lambda line: None) -> list[MiaResult]:
    """Several membership datasets (``(spec, result folder)`` each) in one call: every model
    they need trains in ONE ``train_runs`` call, so the targets of several n and seeds share
    multi-model groups and a shadow needed twice trains once; then each is attacked and
    written. ``target_run`` (one job only) is attacked instead of training the target.
    ``control``: how many control images (``membership_queries``; None: the default)."""
    if target_run is not None and len(jobs) != 1:
        raise ConfigError("--target-run attacks one target; give one --spec with it")
    torch_device = resolve_device(device)
    for _, out in jobs:
        check_output(out)
    bundles: dict[str, DatasetBundle] = {}
    plans = []
    population = max((int(a.options["population"]) for a in attacks if a.needs_population),
                     default=0)
    for mem, out in jobs:
        if mem.spurious.dataset not in bundles:
            bundles[mem.spurious.dataset] = load_dataset(mem.spurious.dataset, data_dir,
                                                         download)
        bundle = bundles[mem.spurious.dataset]
        split = membership_split(mem, bundle.train.labels.numpy())
        queries = query_images(bundle, split, control_size(split, control), population)
        job_config = check_target_run(target_run, split) if target_run is not None else config
        plans.append((mem, out, split, queries, job_config,
                      plan_models(split, job_config, attacks)))
    given = {}
    if target_run is not None:  # used where it is, wherever its runs root
        given[_key(plans[0][5]["target"].requests[0])] = target_run
    requests = [r for *_, sets in plans for model_set in sets.values()
                for r in model_set.requests if _key(r) not in given]
    on_stage(f"{', '.join(m.name for m, _ in jobs)}: {len(set(map(_key, requests)))} models "
             f"to train or reuse ({_describe(plans)}), {plans[0][2].target_members.size} "
             f"training images each")
    results = train_runs(requests, group_size=group_size, runs_dir=runs_dir, data_dir=data_dir,
                         download=download, progress=progress, device=device)
    _raise_failures(results)
    runs = {**given, **{_key(r.request): r.outcome.run for r in results}}
    return [_attack_one(mem, out, split, queries, job_config, sets, runs, attacks,
                        torch_device, progress)
            for mem, out, split, queries, job_config, sets in plans]


def _attack_one(mem: MembershipSpec, out: Path, split: MembershipSplit, queries: QueryImages,
                config: TrainConfig, sets: dict[str, ModelSet], runs: dict[str, Run],
                attacks: Sequence[Attack], device: torch.device, progress: bool) -> MiaResult:
    population_designs = {a.shadow_design for a in attacks if a.needs_population}
    observed, population = _observe(sets, runs, queries, population_designs, device, progress)
    target = observed["target"][0]
    outputs = {}
    for attack in attacks:
        shadows = observed[attack.shadow_design][:attack.num_shadows]
        if attack.needs_population:
            pool = population[attack.shadow_design][:attack.num_shadows]
            outputs[attack.label] = attack.attack(
                target, shadows, population=Population(population["target"][0], pool))
        else:
            outputs[attack.label] = attack.attack(target, shadows)
    metrics = _metrics(mem, split, queries, config, attacks, sets, runs, target, outputs)
    _write_result(out, metrics, split, queries, target, outputs,
                  sets["target"].observed[0][0])
    return MiaResult(out, metrics)


def _observe(sets: dict[str, ModelSet], runs: dict[str, Run], queries: QueryImages,
             population_designs: set[str], device: torch.device,
             progress: bool) -> tuple[dict[str, list[Observations]],
                                      dict[str, list[Observations]]]:
    """Every model's logits on the examples its design names, followed (for the target and
    the halves shadows) by the control images, and the population where an attack of the
    design needs it (a progress bar over the models)."""
    jobs = [(name, request, indices, member) for name, model_set in sets.items()
            for request, (indices, member) in zip(model_set.requests, model_set.observed)]
    observed: dict[str, list[Observations]] = {name: [] for name in sets}
    population: dict[str, list[Observations]] = {name: [] for name in sets}
    control_labels = queries.labels[queries.control]
    for name, request, indices, member in track(
            jobs, description="observing models", disable=not progress,
            console=Console(stderr=True)):
        model = runs[_key(request)].load_model().to(device)
        logits = _logits(model, queries.train[torch.from_numpy(indices)], device)
        labels = queries.labels[indices]
        if name != SHADOW_POOL and queries.control.size:  # the pool shadow: its pool only
            logits = np.concatenate([logits, _logits(model, queries.control_images, device)])
            labels = np.concatenate([labels, control_labels])
            member = np.concatenate([member, np.zeros(queries.control.size, dtype=bool)])
        observed[name].append(Observations(logits, labels, member))
        if population_designs and (name == "target" or name in population_designs):
            rows = queries.population
            population[name].append(Observations(
                _logits(model, queries.train[torch.from_numpy(rows)], device),
                queries.labels[rows], np.zeros(rows.size, dtype=bool)))
    return observed, population


def _key(request: RunRequest) -> str:
    return config_hash(run_config(request.spec, request.config, request.subset))


def _describe(plans: list) -> str:
    counts: dict[str, set] = {}
    for *_, sets in plans:
        for name, model_set in sets.items():
            counts.setdefault(name, set()).update(map(_key, model_set.requests))
    return ", ".join(f"{name} {len(keys)}" for name, keys in counts.items())


def _raise_failures(results: list[RunResult]) -> None:
    failed = [r for r in results if r.error is not None]
    if failed:
        first = failed[0]
        raise RscError(f"{len(failed)} of {len(results)} models failed to train; first: "
                       f"{first.request.spec.name} (train seed {first.request.config.seed}): "
                       f"{first.error}")


def _logits(model: torch.nn.Module, images: torch.Tensor, device: torch.device) -> np.ndarray:
    return predict_logits(model, images, device).double().numpy()


def _check_output(attack: Attack, output: AttackOutput, rows: int) -> None:
    """An attack returns one score and one decision per example it was given."""
    if np.shape(output.scores) != (rows,) or np.shape(output.decisions) != (rows,):
        raise RscError(f"attack {attack.label} returned {np.shape(output.scores)} scores and "
                       f"{np.shape(output.decisions)} decisions for {rows} examples; an "
                       f"attack must score every example it is given")
    try:
        to_json(output.details)
    except (TypeError, ValueError) as exc:
        raise RscError(f"attack {attack.label} returned details that cannot be written to "
                       f"metrics.json ({exc}); AttackOutput.details must hold only numbers, "
                       f"strings, booleans, None, lists and dicts (numpy arrays and scalars "
                       f"are converted)") from None


def _metrics(mem: MembershipSpec, split: MembershipSplit, queries: QueryImages,
             config: TrainConfig, attacks: Sequence[Attack], sets: dict[str, ModelSet],
             runs: dict[str, Run], target: Observations,
             outputs: dict[str, AttackOutput]) -> dict[str, Any]:
    """metrics.json: every attack's metrics over the target's pool (the first rows of its
    observations) and its slices, the control (the rows after the pool) among them."""
    indices = sets["target"].observed[0][0]
    pool = indices.size
    planted = np.isin(indices, split.spurious)
    same_class = np.isin(indices, split.same_class_members())
    per_attack = {}
    for attack in attacks:
        output = outputs[attack.label]
        _check_output(attack, output, len(target))
        scores = np.asarray(output.scores, dtype=np.float64)
        decisions = np.asarray(output.decisions, dtype=bool)
        per_attack[attack.label] = {
            **membership_metrics(target.member[:pool], scores[:pool], decisions[:pool],
                                 planted, same_class, scores[pool:], decisions[pool:]),
            "attack": attack.name, "options": attack.options,
            "shadow_design": attack.shadow_design, "shadows": attack.num_shadows,
            "details": finite(output.details)}
    member = target.member[:pool]
    correct = target.correct()
    return {
        "rsc_mia": RESULT_FORMAT,
        "created_at": _dt.datetime.now().isoformat(timespec="seconds"),
        "spec": mem.as_dict(), "split": split.summary(), "train": config.as_dict(),
        "control": {"count": int(queries.control.size),
                    "pattern": mem.spurious.pattern, "seed": mem.spurious.seed,
                    "class": mem.spurious.target,
                    "target_accuracy": float(correct[pool:].mean()) if len(correct) > pool
                    else None},
        "population": int(queries.population.size),
        "target_accuracy_members": float(correct[:pool][member].mean()),
        "target_accuracy_non_members": float(correct[:pool][~member].mean()),
        "runs": {name: [runs[_key(r)].name for r in model_set.requests]
                 for name, model_set in sets.items()},
        "attacks": finite(per_attack),
    }


def _scores_csv(indices: np.ndarray, queries: QueryImages, target: Observations,
                split: MembershipSplit, outputs: dict[str, AttackOutput]) -> str:
    """One row per scored example: the target's pool, then the control images (``control``
    1; their ``index`` is the original image the pattern was drawn on)."""
    rows = np.concatenate([indices, queries.control])
    control = np.arange(rows.size) >= indices.size
    planted = np.isin(rows, split.spurious) & ~control
    same_class = np.isin(rows, split.same_class_members()) & ~control
    header = ["index", "label", "member", "planted", "same_class_member", "control", "loss"]
    columns = [rows, target.labels, target.member.astype(int), planted.astype(int),
               same_class.astype(int), control.astype(int), target.losses()]
    for name, output in outputs.items():
        header += [f"{name}_score", f"{name}_member"]
        columns += [np.asarray(output.scores, dtype=np.float64),
                    np.asarray(output.decisions).astype(int)]
    lines = [",".join(header)]
    for row in zip(*columns):
        lines.append(",".join(repr(float(v)) if isinstance(v, (float, np.floating)) else
                              str(int(v)) for v in row))
    return "\n".join(lines) + "\n"


def _write_result(out: Path, metrics: dict[str, Any], split: MembershipSplit,
                  queries: QueryImages, target: Observations,
                  outputs: dict[str, AttackOutput], indices: np.ndarray) -> None:
    """Fill a temporary folder beside ``out``, then rename it into place (an older result of
    the same name is replaced only once the new one is complete)."""
    with replaced_folder(out) as tmp:
        write_json(tmp / "metrics.json", metrics)
        write_json(tmp / "split.json", {**split.as_dict(), "control": queries.control.tolist(),
                                        "population": queries.population.tolist()})
        write_text(tmp / "scores.csv", _scores_csv(indices, queries, target, split, outputs))
        pool = indices.size
        curves = {name: (target.member[:pool], np.asarray(output.scores)[:pool])
                  for name, output in outputs.items()}
        train = metrics["train"]
        save_roc_plot(curves, metrics["attacks"],
                      f"{split.spec.name}: 1 target model, {train['arch']}, "
                      f"{train['epochs']} epoch(s), {pool} examples, "
                      f"{queries.control.size} control images", tmp / "roc.png")
