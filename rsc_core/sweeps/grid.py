"""Sweep grids: a TOML file (or a preset) declaring axes, validated before anything runs and
expanded into one ``RunRequest`` per combination.

Top-level keys are axes: a list varies, a single value is fixed. Dataset axes are
``dataset``, ``pattern``, ``n``, ``target`` and ``seed`` (the dataset seed); every ``rsc
train`` option is a recipe axis under its option name (``epochs``, ``lr``, ``batch_size`` or
``batch-size``, ``model``, ``regularisers``, ``train_seed``, ...), with the meaning it has in
``rsc train`` (``rsc_core.train_recipe``). ``recipe`` is an axis of coupled settings (a list of
tables, e.g. ``[{optimizer = "adam"}, {optimizer = "sgd", momentum = 0.9}]``). The tables
``[sweep]`` (executor, workers, threads, group_size, scheduler, device) and ``[slurm]``
(submitit resources) say how to run it.

Every error names the file and line of the key at fault, in one line."""
from __future__ import annotations

import itertools
import math
import re
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from rsc_core import registry
from rsc_core.errors import ConfigError, RscError
from rsc_core.runs.groups import RunRequest
from rsc_core.runs.folder import config_hash, run_config
from rsc_core.data.spec import SpuriousSpec, parse_int_list
from rsc_core.training.recipe import RECIPE_DEFAULTS, build_train_config, recipe_config
from rsc_core.training.trainer import MAX_TRAIN_SEED

SPEC_KEYS = ("dataset", "pattern", "n", "target", "seed")
#: Grid key -> ``build_train_config`` parameter (the ``rsc train`` option ``--model`` is stored
#: as ``model_spec``).
RECIPE_KEYS = {("model" if name == "model_spec" else name): name for name in RECIPE_DEFAULTS}
SWEEP_KEYS = {"executor": str, "workers": int, "threads": int, "group_size": int,
              "scheduler": str, "device": str}
SLURM_KEYS = {"partition": str, "time": int, "cpus_per_task": int, "mem_gb": (int, float),
              "gpus_per_node": int, "array_parallelism": int, "account": str, "qos": str,
              "constraint": str, "cluster": str}
_LIST_VALUED = {"regularisers", "milestones"}
#: The most combinations a grid may have (``check_size``): far beyond the study's largest
#: experiment (684 runs), far below what takes minutes just to list.
MAX_GRID_RUNS = 100_000
#: Invalid recipes listed one by one; the rest are counted.
MAX_PROBLEMS = 10


class GridError(ConfigError):
    """A grid file or preset that cannot be run; the message names the line."""


@dataclass(frozen=True)
class Axis:
    """One grid key and its values; ``where`` says where it was declared (for errors)."""

    key: str
    values: tuple[Any, ...]
    where: str


@dataclass
class Grid:
    """A validated grid: its axes in declaration order and how to run it; ``raw`` is the
    grid as declared (changes included), to print it back as a file."""

    name: str
    axes: dict[str, Axis]
    sweep: dict[str, Any] = field(default_factory=dict)
    slurm: dict[str, Any] = field(default_factory=dict)
    raw: dict[str, Any] = field(default_factory=dict)

    def override(self, key: str, value: Any, where: str) -> None:
        """Replace (or add) an axis, e.g. from ``--n 0,1,3`` on the command line."""
        key = _canonical_key(key, where)
        self.axes[key] = _axis(key, value, where)
        _check_axis(self.axes[key])
        self.raw = {**{k: v for k, v in self.raw.items() if k.replace("-", "_") != key},
                    key: value}

    def requests(self) -> list[RunRequest]:
        return expand(self)


def load_grid(path: str | Path) -> Grid:
    """Read and validate a grid file; every problem is a ``GridError`` naming the line."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise GridError(f"grid file {path} does not exist; give a .toml file or --preset "
                        f"NAME") from None
    except UnicodeDecodeError:
        raise GridError(f"grid file {path} is not UTF-8 text") from None
    return parse_grid(text, str(path))


def parse_grid(text: str, source: str = "grid") -> Grid:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise GridError(f"{source}: not valid TOML: {exc}") from None
    lines = _key_lines(text)

    def where(table: str, key: str) -> str:
        line = lines.get((table, key))
        return f"{source} line {line}" if line else source

    return grid_from_dict(data, Path(source).stem, where)


def grid_from_dict(data: dict[str, Any], name: str, where: Any = None) -> Grid:
    """A grid from TOML-like data (a parsed file or a preset). ``where(table, key)`` says
    where a key was declared; by default ``name``."""
    where = where or (lambda table, key: name)
    grid = Grid(data.get("name", name) if isinstance(data.get("name"), str) else name, {},
                raw=dict(data))
    problems = []  # every bad key is reported, not only the first
    for key, value in data.items():
        if key == "name":
            continue
        try:
            _read_key(grid, key, value, where)
        except GridError as exc:
            problems.append(str(exc))
    if not any(key.replace("-", "_") == "dataset" for key in data):
        problems.append(f"{where('', 'dataset')}: the grid names no dataset; add e.g. "
                        f"dataset = \"mnist\"")
    if problems:
        raise GridError.several(problems)
    return grid


def _read_key(grid: Grid, key: str, value: Any, where: Any) -> None:
    """Read one top-level key of a grid into ``grid``: a table, or a checked axis."""
    if key == "sweep":
        grid.sweep = _settings(value, SWEEP_KEYS, "sweep", where)
    elif key == "slurm":
        grid.slurm = _settings(value, SLURM_KEYS, "slurm", where)
    else:
        canonical = _canonical_key(key, where("", key))
        if isinstance(value, dict):
            raise GridError(f"{where('', key)}: {key} is a table; only [sweep] and [slurm] "
                            f"are tables, axes are values or lists")
        axis = _axis(canonical, value, where("", key))
        _check_axis(axis)
        grid.axes[canonical] = axis


def _key_lines(text: str) -> dict[tuple[str, str], int]:
    """(table, key) -> line number of its first ``key =``: tomllib reports no positions."""
    lines: dict[tuple[str, str], int] = {}
    table = ""
    for number, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        header = re.match(r"\[\s*([A-Za-z0-9_.\"-]+)\s*\]", stripped)
        if header:
            table = header[1].strip('"')
            lines.setdefault(("", table), number)
            continue
        key = re.match(r"(\"[^\"]*\"|[A-Za-z0-9_-]+)\s*=", stripped)
        if key:
            lines.setdefault((table, key[1].strip('"')), number)
    return lines


def _canonical_key(key: str, where: str) -> str:
    key = key.replace("-", "_")
    if key in ("model_spec", "regulariser"):
        key = {"model_spec": "model", "regulariser": "regularisers"}[key]
    if key in SPEC_KEYS or key in RECIPE_KEYS or key == "recipe":
        return key
    import difflib

    known = [*SPEC_KEYS, *RECIPE_KEYS, "recipe"]
    close = difflib.get_close_matches(key, known, n=1)
    hint = f"did you mean {close[0]}?" if close else f"axes: {', '.join(known)}"
    raise GridError(f"{where}: unknown key {key!r}; {hint}")


def _settings(value: Any, known: dict[str, Any], table: str, where: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise GridError(f"{where('', table)}: {table} must be a table ([{table}])")
    settings = {}
    for key, item in value.items():
        name = key.replace("-", "_")
        if name not in known:
            raise GridError(f"{where(table, key)}: unknown key {key!r} in [{table}]; known: "
                            f"{', '.join(known)}")
        if isinstance(item, bool) or not isinstance(item, known[name]):
            raise GridError(f"{where(table, key)}: {table}.{key} must be "
                            f"{_type_name(known[name])}, got {item!r}")
        settings[name] = item
    return settings


def _type_name(kind: Any) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return " or ".join({"str": "a string", "int": "a whole number",
                        "float": "a number"}[k.__name__] for k in kinds)


def _axis(key: str, value: Any, where: str) -> Axis:
    """The values of one key: a list is an axis, except for keys whose single value is a
    list (regularisers, milestones), which vary as a list of lists."""
    if key in ("seed", "train_seed") and isinstance(value, str):
        maximum = MAX_TRAIN_SEED if key == "train_seed" else 2**32 - 1
        try:
            return Axis(key, tuple(parse_int_list(value, f"{key}s", maximum)), where)
        except RscError as exc:
            raise GridError(f"{where}: {exc}") from None
    if key in _LIST_VALUED:
        if isinstance(value, list) and value and all(isinstance(v, list) for v in value):
            return Axis(key, tuple(tuple(v) for v in value), where)
        return Axis(key, (tuple(value) if isinstance(value, list) else value,), where)
    if isinstance(value, list):
        if not value:
            raise GridError(f"{where}: {key} is an empty list; give at least one value")
        return Axis(key, tuple(value), where)
    return Axis(key, (value,), where)


_SPEC_TYPES = {"dataset": str, "pattern": str, "n": int, "target": int, "seed": int}


def _recipe_type(key: str) -> Any:
    hints = typing.get_type_hints(build_train_config)
    return hints[RECIPE_KEYS[key]]


def _check_axis(axis: Axis) -> None:
    """Each value alone must be valid: names registered, numbers of the right kind."""
    if len(set(map(repr, axis.values))) < len(axis.values):
        raise GridError(f"{axis.where}: {axis.key} lists a value twice")
    values = axis.values
    if axis.key in ("seed", "train_seed") and all(_is(v, int) for v in values):
        values = (min(values), max(values))  # a range check: its ends stand for the rest
    for value in values:
        try:
            _check_value(axis.key, value)
        except RscError as exc:
            raise GridError(f"{axis.where}: {axis.key} = {_show(value)}: {exc}") from None


def _check_value(key: str, value: Any) -> None:
    if key in _SPEC_TYPES:
        _check_type(key, value, _SPEC_TYPES[key])
        if key in ("n", "target", "seed") and value < 0:
            raise ConfigError(f"{key} must be non-negative")
        if key in ("dataset", "pattern"):
            registry(f"{key}s").get(value)
        return
    if key == "recipe":
        if not isinstance(value, dict) or not value:
            raise ConfigError("recipe values must be tables of rsc train options, e.g. "
                              "{optimizer = \"sgd\", momentum = 0.9}")
        for inner, item in value.items():
            name = _canonical_key(inner, "recipe")
            if name in SPEC_KEYS or name == "recipe":
                raise ConfigError(f"{inner} is a dataset axis, not a recipe option")
            if isinstance(item, list) and name not in _LIST_VALUED:
                raise ConfigError(f"{inner}: a recipe sets one value; make {inner} an axis "
                                  f"of its own to vary it")
            try:
                _check_value(name, _axis(name, item, "recipe").values[0])
            except RscError as exc:
                raise ConfigError(f"{inner}: {exc}") from None
        recipe_config(_recipe_options(value))
        return
    _check_type(key, value, _recipe_type(key))
    config = recipe_config(_recipe_options({key: value}))
    registry("architectures").get(config.arch)
    registry("trainers").get(config.trainer)


def _check_type(key: str, value: Any, kind: Any) -> None:
    if key == "milestones" and isinstance(value, tuple):
        kind = tuple[int, ...]
    union = typing.get_origin(kind) in (typing.Union, types.UnionType)
    allowed = set(typing.get_args(kind)) if union else {kind}
    allowed.discard(type(None))
    for option in allowed:
        origin = typing.get_origin(option)
        if origin is tuple:
            item = typing.get_args(option)[0]
            if isinstance(value, tuple) and all(_is(v, item) for v in value):
                return
        elif _is(value, option):
            return
    got = "list" if isinstance(value, tuple) else type(value).__name__
    raise ConfigError(f"must be {' or '.join(_kind_name(k) for k in allowed)}, got {got}")


def _kind_name(kind: Any) -> str:
    names = {str: "a string", int: "a whole number", float: "a number", bool: "true or false"}
    if typing.get_origin(kind) is tuple:
        item = names.get(typing.get_args(kind)[0], "value").split(" ", 1)[-1]
        return f"a list of {item}s"
    return names.get(kind, getattr(kind, "__name__", str(kind)))


def _is(value: Any, kind: Any) -> bool:
    if kind is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, kind)


def _recipe_options(values: dict[str, Any]) -> dict[str, Any]:
    """Grid values -> ``build_train_config`` keyword arguments."""
    options = {}
    for key, value in values.items():
        key = _canonical_key(key, "recipe")
        value = tuple(value) if isinstance(value, list) else value
        if key == "milestones" and isinstance(value, tuple):
            value = ",".join(str(v) for v in value)
        if key == "regularisers":
            value = tuple(value) if isinstance(value, (list, tuple)) else (value,)
        if key in ("lr", "momentum", "weight_decay", "grad_clip", "input_noise"):
            value = float(value)
        options[RECIPE_KEYS[key]] = value
    return options


def _show(value: Any) -> str:
    return repr(list(value)) if isinstance(value, tuple) else repr(value)


def check_size(grid: Grid) -> int:
    """The number of combinations (an upper bound on the runs), refused beyond
    ``MAX_GRID_RUNS`` before anything is expanded: a grid of 10^8 runs would take minutes
    and gigabytes just to list. The error names the largest axis and where it is declared."""
    sizes = {key: len(axis.values) for key, axis in grid.axes.items()}
    total = math.prod(sizes.values())
    if total > MAX_GRID_RUNS:
        largest = max(sizes, key=sizes.__getitem__)
        raise GridError(f"{grid.axes[largest].where}: the grid has {total:,} combinations, "
                        f"more than the {MAX_GRID_RUNS:,} a sweep takes; its largest axis is "
                        f"{largest} ({sizes[largest]:,} values); narrow it, or split the grid "
                        f"into several sweeps")
    return total


def expand(grid: Grid) -> list[RunRequest]:
    """Every combination, each run once. ``n = 0`` is the clean dataset: one run per recipe
    and training seed, whatever the pattern, target and dataset seed. Every recipe that cannot
    be trained is reported, all in one error."""
    check_size(grid)
    recipe_axes = [a for k, a in grid.axes.items() if k not in SPEC_KEYS]
    requests, seen, problems = [], set(), []
    for combination in itertools.product(*(a.values for a in recipe_axes)):
        values: dict[str, Any] = {}
        for axis, value in zip(recipe_axes, combination):
            values.update(value if axis.key == "recipe" else {axis.key: value})
        try:
            config = recipe_config(_recipe_options(values))
        except RscError as exc:
            where = _where_many(a.where for a in recipe_axes)
            problems.append(f"{where}: the recipe {_describe(values)} is invalid: {exc}")
            continue
        for spec in _specs(grid):
            key = config_hash(run_config(spec, config))
            if key not in seen:
                seen.add(key)
                requests.append(RunRequest(spec, config))
    if len(problems) > MAX_PROBLEMS:
        problems[MAX_PROBLEMS:] = [f"{grid.name}: and {len(problems) - MAX_PROBLEMS} more "
                                   f"invalid recipes like these"]
    if problems:
        raise GridError.several(problems)
    return requests


def _specs(grid: Grid) -> Iterable[SpuriousSpec]:
    axes = {key: grid.axes[key].values if key in grid.axes else default
            for key, default in (("dataset", ()), ("pattern", (None,)), ("n", (0,)),
                                 ("target", (0,)), ("seed", (0,)))}
    for dataset, pattern, n, target, seed in itertools.product(*axes.values()):
        try:
            if n == 0:
                yield SpuriousSpec.build(dataset)
            else:
                yield SpuriousSpec.build(dataset, pattern, n, (target,), seed)
        except RscError as exc:
            where = _where_many(grid.axes[k].where for k in SPEC_KEYS if k in grid.axes)
            raise GridError(f"{where}: dataset {dataset!r}, pattern {pattern!r}, n {n}, "
                            f"target {target}, seed {seed}: {exc}") from None


def _describe(values: dict[str, Any]) -> str:
    return ", ".join(f"{k} = {_show(v)}" for k, v in values.items()) or "(defaults)"


def _where_many(places: Iterable[str]) -> str:
    """``g.toml line 2``, ``g.toml line 5`` -> ``g.toml lines 2, 5``."""
    places = sorted(set(places))
    found = [re.fullmatch(r"(.*) line (\d+)", p) for p in places]
    sources = {m[1] for m in found if m}
    if len(sources) == 1 and all(found):
        numbers = sorted(int(m[2]) for m in found if m)
        label = "line" if len(numbers) == 1 else "lines"
        return f"{sources.pop()} {label} {', '.join(map(str, numbers))}"
    return ", ".join(places)
