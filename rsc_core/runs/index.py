"""The results index: one SQLite row per run folder under a runs root, so that listing,
filtering and reporting hundreds of runs does not mean opening hundreds of JSON files.

The run folders stay the source of truth; the index (``<runs root>/.rsc-index.sqlite``) is a
cache of what they say, and every query first brings it up to date:

* **Missing** (first use, deleted) or written by another index format (``PRAGMA
  user_version``) or unreadable (not a database, malformed): rebuilt from every run folder.
* **Stale** rows are re-read, one folder at a time. A folder's row is stale when its
  *signature* differs from the one the row recorded: the size and modification time (ns) of
  ``config.json`` and of ``metrics.json`` (absent, then present once the run finishes, and
  rewritten by ``--force``). Rows of unfinished runs are always re-read, because whether a run
  is still training shows in its lock, not in its files. New folders are added; rows whose
  folder is gone are removed.

Each refresh is applied in one transaction, so a reader never sees half an update. Several
processes (sweep workers, a user listing runs) may update the index at once: SQLite's own file
locking serialises the writers, each waiting up to ``BUSY_TIMEOUT_S``; the journal is WAL
(readers never block the writer) except on network file systems, where SQLite's WAL does not
work and the classic rollback journal is used. A query that still finds the index locked
after that wait answers from the run folders (an in-memory index, with a warning), never
with an error. ``record_run`` (called when a run finishes) is a
best-effort update: any failure is a warning, never an error, because the run folder already
holds the result and the next query rebuilds the row. A runs root the user may not write gets
an in-memory index for the one query (with a warning).

``--where`` filters (``where_sql``) are a small expression language parsed here, never pasted
into SQL: column names are checked against ``COLUMNS`` and every value is a bound parameter.
"""
from __future__ import annotations

import json
import math
import os
import re
import sqlite3
import warnings
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

from rsc_core.errors import ConfigError, RscError
from rsc_core.storage.paths import runs_dir as resolve_runs_dir
from rsc_core.runs.pooling import baseline_identity, identity_hash, recipe_identity, variant_label
from rsc_core.runs.folder import RUN_FORMAT, Run, format_number
from rsc_core.data.subsets import TrainSubset

INDEX_NAME = ".rsc-index.sqlite"
#: Bump when the columns or their meaning change: an index of another version is rebuilt.
INDEX_VERSION = 5
BUSY_TIMEOUT_S = 60.0
#: File systems on which SQLite's WAL mode cannot work (it needs shared memory on one host).
NETWORK_FILESYSTEMS = ("nfs", "nfs4", "cifs", "smb", "smbfs", "smb3", "lustre", "gpfs",
                       "beegfs", "fuse.sshfs", "9p", "afs", "ceph", "glusterfs", "fuse.glusterfs")

#: Public columns: name -> (SQLite type, meaning). The order is the order of listings.
COLUMNS: dict[str, tuple[str, str]] = {
    "name": ("TEXT", "run folder name"),
    "status": ("TEXT", "finished, running, interrupted (resumable), failed (its log says "
                       "why), started (no epoch yet) or unreadable"),
    "dataset": ("TEXT", "dataset"),
    "pattern": ("TEXT", "pattern (null for a clean run)"),
    "n": ("INTEGER", "number of spurious training examples (0 for a clean run)"),
    "target": ("INTEGER", "(first) target class (null for a clean run)"),
    "targets": ("TEXT", "all target classes, comma-separated"),
    "dataset_seed": ("INTEGER", "the spec's seed: which images carry the pattern, noise"),
    "spec": ("TEXT", "reference-style dataset name, e.g. mnistv8-3-0-0"),
    "arch": ("TEXT", "architecture"),
    "loss": ("TEXT", "loss"),
    "aug": ("TEXT", "augmentation (null: none)"),
    "optimizer": ("TEXT", "optimizer"),
    "lr": ("REAL", "learning rate"),
    "momentum": ("REAL", "momentum"),
    "batch_size": ("INTEGER", "batch size"),
    "epochs": ("INTEGER", "epochs the recipe asks for"),
    "train_seed": ("INTEGER", "training seed (initialisation, batch order; --train-seed)"),
    "milestones": ("TEXT", "learning-rate milestones (null: the reference's table)"),
    "regularisers": ("TEXT", "regularisers, e.g. weight-decay:value=0.001 (empty: none)"),
    "trainer": ("TEXT", "trainer"),
    "precision": ("TEXT", "fp32 or bf16"),
    "adam_impl": ("TEXT", "Adam kernel"),
    "subset": ("TEXT", "training rows used when not all, e.g. minus3-1a2b3c4d (--exclude, "
                       "rsc remove, rsc mia); null: the whole training set"),
    "removal": ("TEXT", "for a removal run (rsc remove), its method and tag, e.g. "
                        "group-influence-lissa-reference; null: a trained run"),
    "removal_of": ("TEXT", "for a removal run, the folder name of the run it started from"),
    "recipe": ("TEXT", "the training recipe without the seed, readable, with the training "
                       "subset and removal (e.g. minus-spurious, rm-retrain)"),
    "recipe_id": ("TEXT", "hash of everything but the seeds and the spec (recipe, training "
                          "subset relative to the spec, removal): runs of one spec with equal "
                          "recipe_id pool as seeds (rsc_core.pooling)"),
    "baseline_id": ("TEXT", "the recipe_id a clean run needs to be this run's baseline "
                            "(trained like it, on the same rows)"),
    "epochs_done": ("INTEGER", "epochs completed"),
    "clean_accuracy": ("REAL", "clean test accuracy at the end"),
    "train_accuracy": ("REAL", "training accuracy at the end"),
    "score": ("REAL", "spurious score of the run's own pattern (threshold 0.1, all test "
                      "images; null for a clean run)"),
    "patterned_accuracy": ("REAL", "accuracy on patterned test images with y != target"),
    "finished_at": ("TEXT", "when the run finished (local time, ISO 8601)"),
    "error": ("TEXT", "why the run failed, or why its folder could not be read"),
    "path": ("TEXT", "absolute path of the run folder"),
}
_ORDER = "dataset, pattern, target, recipe, n, dataset_seed, train_seed, name"
#: Earlier names of columns, still accepted in --where and --columns.
COLUMN_ALIASES = {"training_seed": "train_seed"}


def column_name(text: str) -> str | None:
    """The column ``text`` names (case-insensitive, old names included), or None."""
    name = text.strip().lower()
    name = COLUMN_ALIASES.get(name, name)
    return name if name in COLUMNS else None


def index_path(runs_root: str | Path) -> Path:
    return Path(runs_root) / INDEX_NAME


def removal_label(removal: dict[str, Any] | None) -> str | None:
    """``group-influence-lissa-reference``: the removal method and its tag (``rsc remove``);
    the same for every seed of one removal experiment."""
    if not removal:
        return None
    tag = removal.get("tag") or ""
    return f"{removal.get('method')}{'-' + tag if tag else ''}"


def regulariser_label(regularisers: Iterable[dict[str, Any]]) -> str:
    """``weight-decay:value=0.001+input-noise:sigma=0.1`` (the ``-r`` syntax); empty: none."""
    parts = []
    for reg in regularisers:
        params = ",".join(f"{k}={format_number(v)}"
                          for k, v in sorted((reg.get("params") or {}).items()))
        parts.append(f"{reg['name']}:{params}" if params else str(reg["name"]))
    return "+".join(parts)


def recipe_label(train: dict[str, Any]) -> str:
    """A readable recipe without the seed, e.g. ``ce-tor-LargeMLP adam lr0.01 b128 e70``."""
    model = f"{train.get('aug') + '-' if train.get('aug') else ''}{train['loss']}-tor-" \
            f"{train['arch']}"
    words = [model, train["optimizer"], f"lr{format_number(train['lr'])}",
             f"b{train['batch_size']}", f"e{train['epochs']}"]
    if train.get("momentum"):
        words.append(f"m{format_number(train['momentum'])}")
    if train.get("adam_impl", "fused") != "fused":
        words.append(train["adam_impl"])
    if train.get("precision", "fp32") != "fp32":
        words.append(train["precision"])
    if train.get("milestones"):
        words.append("ms" + "-".join(map(str, train["milestones"])))
    if train.get("trainer", "erm") != "erm":
        words.append(train["trainer"])
    regs = regulariser_label(train.get("regularisers") or [])
    if regs:
        words.append(regs)
    return " ".join(words)


# --- reading one run folder ---------------------------------------------------------------

def _stat_part(path: Path) -> str:
    try:
        st = path.stat()
    except OSError:
        return "-"
    return f"{st.st_size}:{st.st_mtime_ns}"


def folder_signature(folder: Path) -> str:
    """What a row remembers of its folder to notice a change (see the module docstring)."""
    return f"{_stat_part(folder / 'config.json')}|{_stat_part(folder / 'metrics.json')}"


def _lock_holder(folder: Path) -> str | None:
    """Who trains the run now, from the lock's owner file (``run_lock``), or None. An owner
    file left by a process that died on this host does not count."""
    owner = folder.parent / ".locks" / f"{folder.name}.owner"
    try:
        text = owner.read_text(encoding="utf-8").strip()
    except OSError:
        return None
    match = re.match(r"process (\d+) on (\S+)", text)
    if match and match[2] == os.uname().nodename:
        try:
            os.kill(int(match[1]), 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            pass  # alive, another user's
    return text or "another process"


def _log_state(folder: Path) -> tuple[int | None, str | None]:
    """From ``log.txt``: the last epoch recorded since training last started from scratch
    (per-epoch lines are JSON with ``epoch``; ``start on ...`` begins a fresh training), and
    the error of a failure logged after it (``rsc sweep`` logs ``sweep: failed: ...``)."""
    try:
        lines = (folder / "log.txt").read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError):
        return None, None
    failure = None
    for line in reversed(lines):
        if " start on " in line:
            return 0, failure
        if " failed: " in line and failure is None:
            failure = line.split(" failed: ", 1)[1].strip()
            continue
        start = line.find("{")
        if start < 0:
            continue
        try:
            return int(json.loads(line[start:])["epoch"]), failure
        except (ValueError, KeyError, TypeError):
            continue
    return None, failure


def _unreadable(folder: Path, error: str) -> dict[str, Any]:
    row = dict.fromkeys(COLUMNS)
    row.update(name=folder.name, status="unreadable", error=error, path=str(folder.absolute()))
    return row


def _config_columns(folder: Path, config: dict[str, Any],
                    metrics: dict[str, Any] | None) -> dict[str, Any]:
    """The columns a run's ``config.json`` determines (and its pool identity, for which a
    finished run's ``metrics.json`` tells whether its subset removed its planted rows)."""
    spec, train = config["spec"], config["train"]
    subset, removal = config.get("subset"), config.get("removal")
    targets = list(spec.get("targets") or [])
    variant = variant_label(config, metrics)
    return {
        "name": folder.name, "dataset": spec.get("dataset"), "pattern": spec.get("pattern"),
        "n": spec.get("n"), "target": targets[0] if targets else None,
        "targets": ",".join(map(str, targets)), "dataset_seed": spec.get("seed"),
        "spec": spec.get("name"), "arch": train.get("arch"), "loss": train.get("loss"),
        "aug": train.get("aug"), "optimizer": train.get("optimizer"), "lr": train.get("lr"),
        "momentum": train.get("momentum"), "batch_size": train.get("batch_size"),
        "epochs": train.get("epochs"), "train_seed": train.get("seed"),
        "milestones": (",".join(map(str, train["milestones"]))
                       if train.get("milestones") else None),
        "regularisers": regulariser_label(train.get("regularisers") or []),
        "trainer": train.get("trainer", "erm"),
        "precision": train.get("precision", "bf16" if train.get("amp") else "fp32"),
        "adam_impl": train.get("adam_impl", "fused"),
        "subset": TrainSubset.from_dict(subset).tag() if subset else None,
        "removal": removal_label(removal),
        "removal_of": ((removal.get("source") or {}).get("name") if removal else None),
        "recipe": recipe_label(train) + (f" {variant}" if variant else ""),
        "recipe_id": identity_hash(recipe_identity(config, metrics)),
        "baseline_id": identity_hash(baseline_identity(config, metrics)),
        "path": str(folder.absolute()),
        "error": None,
    }


def read_row(folder: str | Path) -> dict[str, Any]:
    """The index row of one run folder, read from its files (never raises for a bad folder:
    the row says ``unreadable`` and why)."""
    folder = Path(folder)
    run = Run(folder)
    try:
        config = run.config
        metrics = run.metrics
        if config.get("rsc_run") != RUN_FORMAT:
            return _unreadable(folder, f"folder format {config.get('rsc_run')!r}, not "
                                       f"{RUN_FORMAT}")
    except RscError as exc:
        return _unreadable(folder, str(exc))
    except (KeyError, TypeError, OSError) as exc:
        return _unreadable(folder, f"{type(exc).__name__}: {exc}")
    try:
        row = _config_columns(folder, config, metrics)
    except (KeyError, TypeError, ValueError) as exc:
        return _unreadable(folder, f"config.json lacks a field ({type(exc).__name__}: {exc})")
    score = (metrics or {}).get("score") or {}
    finished = bool(metrics and metrics.get("status") == "finished"
                    and (folder / "model.pt").is_file())
    if finished:
        row.update(status="finished", epochs_done=metrics.get("epochs"),
                   clean_accuracy=metrics.get("clean_accuracy"),
                   train_accuracy=metrics.get("train_accuracy"),
                   score=score.get("score"), patterned_accuracy=score.get("patterned_accuracy"),
                   finished_at=metrics.get("finished_at"))
    else:
        holder = _lock_holder(folder)
        has_weights = (folder / "checkpoint.pt").exists() or (folder / "model.pt").exists()
        epoch, failure = _log_state(folder)
        status = ("running" if holder else "failed" if failure
                  else "interrupted" if has_weights else "started")
        row.update(status=status, epochs_done=epoch if has_weights else 0,
                   error=failure if status == "failed" else None)
    return {key: row.get(key) for key in COLUMNS}


def run_folders(runs_root: Path) -> dict[str, Path]:
    """Folders under the runs root that hold a ``config.json`` (hidden ones excluded)."""
    folders = {}
    try:
        entries = list(os.scandir(runs_root))
    except FileNotFoundError:
        return {}
    for entry in entries:
        if entry.name.startswith(".") or not entry.is_dir():
            continue
        if os.path.isfile(os.path.join(entry.path, "config.json")):
            folders[entry.name] = Path(entry.path)
    return folders


# --- the database ---------------------------------------------------------------------------

def _filesystem_type(path: Path) -> str | None:
    """The type of the file system holding ``path`` (Linux ``/proc/mounts``), or None."""
    try:
        mounts = Path("/proc/mounts").read_text().splitlines()
    except OSError:
        return None
    target = str(path.resolve())
    best, kind = "", None
    for line in mounts:
        fields = line.split()
        if len(fields) < 3:
            continue
        point = fields[1].replace("\\040", " ")
        inside = target == point or target.startswith(point.rstrip("/") + "/")
        if inside and len(point) > len(best):
            best, kind = point, fields[2]
    return kind


_CREATE = ("CREATE TABLE IF NOT EXISTS runs ("
           + ", ".join(f"{name} {kind}{' PRIMARY KEY' if name == 'name' else ''}"
                       for name, (kind, _) in COLUMNS.items())
           + ", signature TEXT)")


def _connect(path: Path | str) -> sqlite3.Connection:
    conn = sqlite3.connect(str(path), timeout=BUSY_TIMEOUT_S, isolation_level=None)
    conn.row_factory = sqlite3.Row
    return conn


def _prepare(conn: sqlite3.Connection, root: Path, on_disk: bool) -> None:
    """Choose the journal, and (re)create the table when the file is new or of another
    version. Raises ``sqlite3.DatabaseError`` for a file that is not a usable database."""
    if on_disk:
        kind = _filesystem_type(root) or ""
        mode = "DELETE" if kind in NETWORK_FILESYSTEMS else "WAL"
        conn.execute(f"PRAGMA journal_mode={mode}")  # fixed words, never user text
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if version != INDEX_VERSION:
        conn.execute("BEGIN IMMEDIATE")
        try:
            # another process may have created it while this one waited for the lock
            if conn.execute("PRAGMA user_version").fetchone()[0] != INDEX_VERSION:
                conn.execute("DROP TABLE IF EXISTS runs")
                conn.execute(_CREATE)
                conn.execute(f"PRAGMA user_version={int(INDEX_VERSION)}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
    conn.execute(_CREATE)


def _upsert(conn: sqlite3.Connection, rows: Sequence[tuple[dict[str, Any], str]]) -> None:
    names = list(COLUMNS) + ["signature"]
    sql = (f"INSERT OR REPLACE INTO runs ({', '.join(names)}) "
           f"VALUES ({', '.join('?' for _ in names)})")
    conn.executemany(sql, [[row[k] for k in COLUMNS] + [signature] for row, signature in rows])


def _transaction(conn: sqlite3.Connection, rows: Sequence[tuple[dict[str, Any], str]],
                 removed: Sequence[str]) -> None:
    if not rows and not removed:
        return
    conn.execute("BEGIN IMMEDIATE")
    try:
        _upsert(conn, rows)
        conn.executemany("DELETE FROM runs WHERE name = ?", [(n,) for n in removed])
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


@dataclass
class ResultsIndex:
    """The index of one runs root. Use ``rows()`` / ``row()``; both refresh first."""

    runs_root: Path

    def __post_init__(self) -> None:
        self.runs_root = Path(self.runs_root)

    @property
    def path(self) -> Path:
        return index_path(self.runs_root)

    def _open(self) -> sqlite3.Connection:
        """A connection to the on-disk index, rebuilt when unreadable; an in-memory one when
        the runs root cannot hold it."""
        if not self.runs_root.is_dir():
            raise RscError(f"runs folder {self.runs_root} does not exist; train runs first or "
                           f"give --runs-dir (or RSC_RUNS_DIR)")
        for attempt in (1, 2):
            conn = None
            try:
                conn = _connect(self.path)
                _prepare(conn, self.runs_root, on_disk=True)
                return conn
            except sqlite3.DatabaseError as exc:
                if conn is not None:
                    conn.close()
                if isinstance(exc, sqlite3.OperationalError) and _busy(exc):
                    raise  # locked by another process, not broken: never rebuilt for that
                if _cannot_write(exc) or attempt == 2:
                    break
                warnings.warn(f"results index {self.path} is unreadable ({exc}); rebuilding "
                              f"it from the run folders", stacklevel=3)
                _remove_index_files(self.path)
            except OSError:
                break
        warnings.warn(f"cannot write the results index under {self.runs_root}; using an "
                      f"in-memory index for this query", stacklevel=3)
        return self._in_memory()

    def _in_memory(self) -> sqlite3.Connection:
        """An empty index for one query, filled by ``refresh`` from the run folders."""
        conn = _connect(":memory:")
        _prepare(conn, self.runs_root, on_disk=False)
        return conn

    def refresh(self, conn: sqlite3.Connection) -> None:
        """Bring the index in line with the run folders (see the module docstring)."""
        folders = run_folders(self.runs_root)
        known = {r["name"]: (r["signature"], r["status"], r["path"])
                 for r in conn.execute("SELECT name, signature, status, path FROM runs")}
        changed = []
        for name, folder in folders.items():
            signature = folder_signature(folder)
            old = known.get(name)
            if (old is None or old[0] != signature or old[1] != "finished"
                    or old[2] != str(folder.absolute())):
                changed.append((read_row(folder), signature))
        removed = [name for name in known if name not in folders]
        _transaction(conn, changed, removed)

    def rows(self, where: str | None = None) -> list[dict[str, Any]]:
        """Every run's row (optionally filtered by a ``--where`` expression), in a stable
        order: dataset, pattern, target, recipe, n, seeds, name."""
        clause, params = where_sql(where) if where is not None else ("", [])
        sql = f"SELECT {', '.join(COLUMNS)} FROM runs"
        if clause:
            sql += f" WHERE {clause}"
        try:
            with closing(self._open()) as conn:
                self.refresh(conn)
                return [dict(r) for r in conn.execute(f"{sql} ORDER BY {_ORDER}", params)]
        except sqlite3.OperationalError as exc:
            if not _busy(exc):
                raise
        # Another process held the index's write lock past the busy timeout (a long
        # rebuild, a stuck writer): the folders are the truth, so answer from them.
        warnings.warn(f"the results index {self.path} stayed locked by another process for "
                      f"{BUSY_TIMEOUT_S:g} s; reading the run folders directly this time",
                      stacklevel=2)
        with closing(self._in_memory()) as conn:
            self.refresh(conn)
            return [dict(r) for r in conn.execute(f"{sql} ORDER BY {_ORDER}", params)]

    def row(self, ref: str | Path) -> dict[str, Any]:
        """One run's row, by folder name, path, or a unique prefix of the name."""
        ref_path = Path(ref)
        name = ref_path.name
        if ref_path.is_dir() and ref_path.resolve().parent != self.runs_root.resolve():
            if not (ref_path / "config.json").is_file():
                raise RscError(f"{ref} is not an rsc run folder (no config.json)")
            return read_row(ref_path)  # a run outside this root: read it directly
        rows = self.rows()
        exact = [r for r in rows if r["name"] == name]
        matches = exact or [r for r in rows if r["name"].startswith(name)]
        if len(matches) == 1:
            return matches[0]
        if not matches:
            raise RscError(f"no run named {name!r} under {self.runs_root}; `rsc runs list` "
                           f"shows them")
        shown = ", ".join(r["name"] for r in matches[:5])
        raise RscError(f"{name!r} matches {len(matches)} runs ({shown}"
                       f"{', ...' if len(matches) > 5 else ''}); give more of the name")


def _cannot_write(exc: sqlite3.DatabaseError) -> bool:
    text = str(exc).lower()
    return isinstance(exc, sqlite3.OperationalError) and any(
        word in text for word in ("readonly", "read-only", "unable to open", "disk i/o",
                                  "locking protocol"))


def _busy(exc: sqlite3.OperationalError) -> bool:
    """Whether SQLite gave up waiting for another connection's lock."""
    text = str(exc).lower()
    return "locked" in text or "busy" in text


def _remove_index_files(path: Path) -> None:
    for suffix in ("", "-wal", "-shm", "-journal"):
        try:
            Path(f"{path}{suffix}").unlink()
        except FileNotFoundError:
            pass


def list_runs(where: str | None = None,
              runs_dir: str | Path | None = None) -> list[dict[str, Any]]:
    """The rows of every run under the runs root (``rsc runs list``), refreshed first."""
    return ResultsIndex(resolve_runs_dir(runs_dir)).rows(where)


def get_run(ref: str | Path, runs_dir: str | Path | None = None) -> dict[str, Any]:
    """One run's row (``rsc runs show``)."""
    return ResultsIndex(resolve_runs_dir(runs_dir)).row(ref)


def record_run(run: Run | str | Path) -> bool:
    """Update the index row of one run (call it when a run finishes). Cheap (one folder is
    read, one row written) and never raises: the index is a cache, so a failure is a warning
    and the next query rebuilds the row from the folder. Returns whether the row was written."""
    folder = Path(run.path if isinstance(run, Run) else run)
    try:
        root = folder.parent
        with closing(_connect(index_path(root))) as conn:
            _prepare(conn, root, on_disk=True)
            _transaction(conn, [(read_row(folder), folder_signature(folder))], [])
        return True
    except Exception as exc:  # noqa: BLE001 - a cache must never fail the run it indexes
        warnings.warn(f"could not update the results index for {folder.name} ({exc}); the "
                      f"next `rsc runs list` rebuilds it from the run folder", stacklevel=2)
        return False


# --- the --where language -------------------------------------------------------------------

_TOKEN = re.compile(r"""\s*(?:(?P<op><=|>=|!=|==|=|<|>|~)|(?P<punct>[(),])
                    |(?P<string>'[^']*'|"[^"]*")|(?P<word>[^\s=<>!~(),'"]+))""", re.X)
_KEYWORDS = {"and", "or", "not", "in", "null"}
_SQL_OPS = {"=": "=", "==": "=", "!=": "!=", "<": "<", "<=": "<=", ">": ">", ">=": ">=",
            "~": "GLOB"}
#: Columns whose values may be given by any name the registry knows (``pattern=s3``).
_REGISTRY_KINDS = {"pattern": "patterns", "dataset": "datasets", "arch": "architectures",
                   "trainer": "trainers"}
WHERE_HELP = ("a filter such as \"pattern=v8 and n>=3\": comparisons column OP value with "
              "OP one of = != < <= > >= and ~ (glob, e.g. name~'mnistv8*'), column in (a, b), "
              "= null / != null, combined with and, or, not and parentheses; values are "
              "numbers, words or quoted text")
WHERE_HINT = "write e.g. \"pattern=v8 and n>=3\" (see `rsc runs list --help`)"


def _tokens(text: str) -> list[tuple[str, str]]:
    tokens, pos = [], 0
    text = text.rstrip()
    while pos < len(text):
        match = _TOKEN.match(text, pos)
        if match is None or match.end() == pos:
            raise ConfigError(f"cannot read --where at {text[pos:].strip()[:20]!r}; "
                              f"{WHERE_HINT}")
        kind = match.lastgroup
        value = match[kind]
        if kind == "string":
            value = value[1:-1]
        elif kind == "word" and value.lower() in _KEYWORDS:
            kind, value = "keyword", value.lower()
        tokens.append((kind, value))
        pos = match.end()
    return tokens


class _WhereParser:
    """Recursive descent over ``or`` > ``and`` > ``not`` > comparisons; builds SQL from fixed
    words and validated column names, with every value as a ``?`` parameter."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.tokens = _tokens(text)
        self.pos = 0
        self.params: list[Any] = []

    def error(self, what: str) -> ConfigError:
        return ConfigError(f"cannot read --where {self.text!r}: {what}; {WHERE_HINT}")

    def peek(self) -> tuple[str, str] | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def take(self, kind: str, value: str | None = None) -> str:
        token = self.peek()
        if token is None or token[0] != kind or (value is not None and token[1] != value):
            found = repr(token[1]) if token else "the end"
            raise self.error(f"expected {value or kind}, found {found}")
        self.pos += 1
        return token[1]

    def accept(self, kind: str, value: str) -> bool:
        if self.peek() == (kind, value):
            self.pos += 1
            return True
        return False

    def parse(self) -> str:
        if not self.tokens:
            raise self.error("it is empty")
        sql = self.disjunction()
        if self.peek() is not None:
            raise self.error(f"unexpected {self.peek()[1]!r}")
        return sql

    def disjunction(self) -> str:
        parts = [self.conjunction()]
        while self.accept("keyword", "or"):
            parts.append(self.conjunction())
        return parts[0] if len(parts) == 1 else "(" + " OR ".join(parts) + ")"

    def conjunction(self) -> str:
        parts = [self.negation()]
        while self.accept("keyword", "and"):
            parts.append(self.negation())
        return parts[0] if len(parts) == 1 else "(" + " AND ".join(parts) + ")"

    def negation(self) -> str:
        if self.accept("keyword", "not"):
            return f"(NOT {self.negation()})"
        if self.accept("punct", "("):
            inner = self.disjunction()
            self.take("punct", ")")
            return inner
        return self.comparison()

    def comparison(self) -> str:
        column = self.column()
        if self.accept("keyword", "in"):
            self.take("punct", "(")
            values = [self.value(column)]
            while self.accept("punct", ","):
                values.append(self.value(column))
            self.take("punct", ")")
            if any(v is None for v in values):
                raise self.error("null cannot be listed in 'in (...)'; use = null")
            self.params.extend(values)
            return f"{column} IN ({', '.join('?' for _ in values)})"
        op = self.take("op")
        if self.accept("keyword", "null"):
            if op not in ("=", "==", "!="):
                raise self.error(f"null can only be compared with = or !=, not {op}")
            return f"{column} IS {'NOT ' if op == '!=' else ''}NULL"
        value = self.value(column, resolve=op != "~")
        if op == "~":
            value = str(value)
        self.params.append(value)
        return f"{column} {_SQL_OPS[op]} ?"

    def column(self) -> str:
        token = self.peek()
        if token is None or token[0] != "word":
            found = repr(token[1]) if token else "the end"
            raise self.error(f"expected a column name, found {found}")
        self.pos += 1
        name = column_name(token[1])
        if name is None:
            raise ConfigError(f"unknown column {token[1]!r} in --where; columns: "
                              f"{', '.join(COLUMNS)}")
        return name  # from COLUMNS, which holds only fixed identifiers

    def value(self, column: str, resolve: bool = True) -> Any:
        token = self.peek()
        if token is None or token[0] not in ("word", "string") and token[1] != "null":
            found = repr(token[1]) if token else "the end"
            raise self.error(f"expected a value for {column}, found {found}")
        self.pos += 1
        if token == ("keyword", "null"):
            return None
        return _coerce(column, token[1], resolve, self.error)


def _coerce(column: str, text: str, resolve: bool, error) -> Any:
    kind = COLUMNS[column][0]
    if kind == "INTEGER":
        try:
            return int(text)
        except ValueError:
            raise error(f"{column} takes whole numbers, not {text!r}") from None
    if kind == "REAL":
        try:
            value = float(text)
        except ValueError:
            raise error(f"{column} takes numbers, not {text!r}") from None
        if not math.isfinite(value):
            raise error(f"{column} takes finite numbers, not {text!r}")
        return value
    if resolve and column in _REGISTRY_KINDS:
        from rsc_core import registry

        names = registry(_REGISTRY_KINDS[column])
        for candidate in (text, text.lower()):
            if candidate in names:
                return names.get(candidate).name  # s3 or S3 -> v8
        return text  # a name no plugin knows now may still name old runs
    return text


def where_sql(text: str) -> tuple[str, list[Any]]:
    """Parse a ``--where`` expression into an SQL condition and its parameters."""
    parser = _WhereParser(text)
    sql = parser.parse()
    return sql, parser.params
