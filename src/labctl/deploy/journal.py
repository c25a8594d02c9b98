"""The deploy journal: revisions, deploys and their timed steps, in SQLite.

Every deploy is written step by step as it happens (WAL mode, each write its own
transaction), so a daemon killed mid-deploy leaves an exact record of how far it
got: :meth:`Journal.unfinished` lists those deploys for reconciliation on the
next start. ``current`` says what each deployment is serving and through which
engine process (pid and start time, so a reused pid is never adopted).

Besides deploys, it keeps what a lab report needs over a period: alerts that fired, each
deployment's serving figures by the minute, and bench results run against the lab; those
are kept :data:`KEEP_S` (35 days) and pruned at open and hourly.

The schema evolves through numbered migrations recorded in ``user_version``; a
journal written by a newer labctl is refused rather than misread.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
import contextlib
from dataclasses import dataclass, field
import json
import os
from pathlib import Path
import sqlite3
import time
from typing import Any

from labctl.errors import DeployError
from labctl.home import private_dir

MIGRATIONS: tuple[str, ...] = (
    # 1: revisions, deploys, steps, current
    """
    CREATE TABLE revisions (
        deployment TEXT NOT NULL,
        revision INTEGER NOT NULL,
        spec TEXT NOT NULL,
        created REAL NOT NULL,
        PRIMARY KEY (deployment, revision)
    );
    CREATE TABLE deploys (
        id INTEGER PRIMARY KEY,
        deployment TEXT NOT NULL,
        kind TEXT NOT NULL,
        from_revision INTEGER,
        to_revision INTEGER NOT NULL,
        started REAL NOT NULL,
        finished REAL,
        outcome TEXT,
        error TEXT
    );
    CREATE INDEX deploys_by_deployment ON deploys (deployment, id);
    CREATE TABLE steps (
        deploy_id INTEGER NOT NULL REFERENCES deploys (id),
        seq INTEGER NOT NULL,
        name TEXT NOT NULL,
        started REAL NOT NULL,
        finished REAL,
        outcome TEXT,
        error TEXT,
        freed_bytes INTEGER,
        detail TEXT NOT NULL DEFAULT '{}',
        PRIMARY KEY (deploy_id, seq)
    );
    CREATE TABLE current (
        deployment TEXT PRIMARY KEY,
        revision INTEGER NOT NULL,
        engine_pid INTEGER,
        engine_start REAL,
        url TEXT,
        updated REAL NOT NULL
    );
    """,
    # 2: what a lab report needs besides deploys: alerts that fired, serving figures by the
    # minute, bench results run against the lab
    """
    CREATE TABLE alerts (
        id INTEGER PRIMARY KEY,
        name TEXT NOT NULL,
        severity TEXT NOT NULL,
        labels TEXT NOT NULL,
        summary TEXT NOT NULL,
        started REAL NOT NULL,
        ended REAL
    );
    CREATE INDEX alerts_by_end ON alerts (ended);
    CREATE TABLE serving (
        t REAL NOT NULL,
        deployment TEXT NOT NULL,
        figures TEXT NOT NULL
    );
    CREATE INDEX serving_by_time ON serving (t);
    CREATE TABLE bench (
        id INTEGER PRIMARY KEY,
        t REAL NOT NULL,
        model TEXT NOT NULL,
        result TEXT NOT NULL
    );
    CREATE INDEX bench_by_time ON bench (t);
    """,
    # 3: the physical GPUs (UUIDs, a JSON list) the revision a deploy switched in ran on
    """
    ALTER TABLE deploys ADD COLUMN gpu_uuids TEXT;
    """,
)

#: How long alerts, serving figures and bench results are kept (seconds): a month's report.
KEEP_S = 35 * 86400.0
#: How often they are pruned while the journal is open (seconds), besides at open.
PRUNE_EVERY_S = 3600.0

#: How a deploy can end.
OUTCOMES = ("committed", "rolled_back", "refused", "failed", "interrupted")
#: The tables and columns this labctl reads and writes, checked at open.
SCHEMA = {
    "revisions": ("deployment", "revision", "spec", "created"),
    "deploys": ("id", "deployment", "kind", "from_revision", "to_revision", "started",
                "finished", "outcome", "error", "gpu_uuids"),
    "steps": ("deploy_id", "seq", "name", "started", "finished", "outcome", "error",
              "freed_bytes", "detail"),
    "current": ("deployment", "revision", "engine_pid", "engine_start", "url", "updated"),
    "alerts": ("id", "name", "severity", "labels", "summary", "started", "ended"),
    "serving": ("t", "deployment", "figures"),
    "bench": ("id", "t", "model", "result"),
}  # fmt: skip


@dataclass
class Step:
    """A step being recorded; set ``freed_bytes`` and ``detail`` before it ends."""

    deploy_id: int
    seq: int
    name: str
    detail: dict[str, Any] = field(default_factory=dict)
    freed_bytes: int | None = None


@dataclass(frozen=True)
class Current:
    deployment: str
    revision: int
    engine_pid: int | None
    engine_start: float | None
    url: str | None


class Journal:
    """One SQLite file; use from one thread (the daemon's event loop)."""

    def __init__(
        self,
        path: Path,
        clock: Callable[[], float] = time.time,
        on_step: Callable[[str], None] = lambda name: None,
    ) -> None:
        self.path = path
        self.clock = clock
        #: Told each step's name once its start is on disk (fault injection hooks in here).
        self.on_step = on_step
        #: Told of each step as it begins and ends: (step, "begin" | "ok" | "failed", error).
        self.watchers: list[Callable[[Step, str, str | None], None]] = []
        try:
            private_dir(path.parent)
            # Its rows hold every deploy's settings: the owner's alone (SQLite gives the -wal
            # and -shm files the database file's mode).
            os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))
            if path.stat().st_uid == os.getuid():
                path.chmod(0o600)
        except OSError as exc:
            raise DeployError(
                f"the journal {path} cannot be created ({exc.strerror or exc}); check that "
                "LABCTL_HOME is a directory you can write"
            ) from None
        try:
            self.db = sqlite3.connect(path, isolation_level=None)
            self.db.row_factory = sqlite3.Row
            mode = self.db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise DeployError(
                    f"the journal {path} cannot use write-ahead logging (journal_mode is "
                    f"{mode}); put LABCTL_HOME on a local filesystem"
                )
            self.db.execute("PRAGMA synchronous=NORMAL")
            self.db.execute("PRAGMA foreign_keys=ON")
            self.db.execute("PRAGMA busy_timeout=5000")
            self._migrate()
            self._check_schema()
            self._pruned = 0.0
            self.prune()
        except sqlite3.DatabaseError as exc:
            raise DeployError(
                f"the journal {path} cannot be opened ({exc}); move it aside to start a new one"
            ) from exc

    def _check_schema(self) -> None:
        """Refuse a journal whose tables are not what this labctl writes (damaged or edited)."""
        for table, columns in SCHEMA.items():
            have = {r[1] for r in self.db.execute(f"PRAGMA table_info({table})").fetchall()}
            if not have:
                problem = f"table {table} is missing"
            elif missing := [c for c in columns if c not in have]:
                problem = f"table {table} lacks column(s) {', '.join(missing)}"
            else:
                continue
            raise DeployError(
                f"the journal {self.path} is damaged ({problem}); move it aside "
                f"(mv {self.path} {self.path}.damaged) to start a new one"
            )

    def _migrate(self) -> None:
        version = int(self.db.execute("PRAGMA user_version").fetchone()[0])
        if version > len(MIGRATIONS):
            raise DeployError(
                f"the journal {self.path} is at schema version {version}, newer than this "
                f"labctl knows ({len(MIGRATIONS)}); upgrade labctl"
            )
        for number in range(version + 1, len(MIGRATIONS) + 1):
            with self._tx():
                # executescript() would commit first: run the statements one by one
                for statement in MIGRATIONS[number - 1].split(";"):
                    if statement.strip():
                        self.db.execute(statement)
                self.db.execute(f"PRAGMA user_version={number}")

    @contextlib.contextmanager
    def _tx(self) -> Iterator[None]:
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    @property
    def schema_version(self) -> int:
        return int(self.db.execute("PRAGMA user_version").fetchone()[0])

    @property
    def journal_mode(self) -> str:
        return str(self.db.execute("PRAGMA journal_mode").fetchone()[0])

    def close(self) -> None:
        self.db.close()

    # -- revisions ---------------------------------------------------------------------

    def add_revision(self, deployment: str, spec: dict[str, Any]) -> int:
        """Store a new revision of ``deployment``; returns its number (1, 2, …)."""
        with self._tx():
            row = self.db.execute(
                "SELECT COALESCE(MAX(revision), 0) FROM revisions WHERE deployment = ?",
                (deployment,),
            ).fetchone()
            number = int(row[0]) + 1
            self.db.execute(
                "INSERT INTO revisions VALUES (?, ?, ?, ?)",
                (deployment, number, json.dumps(spec, sort_keys=True), self.clock()),
            )
        return number

    def revision(self, deployment: str, number: int) -> dict[str, Any]:
        row = self.db.execute(
            "SELECT spec FROM revisions WHERE deployment = ? AND revision = ?", (deployment, number)
        ).fetchone()
        if row is None:
            raise DeployError(f"{deployment} has no revision {number}")
        spec: dict[str, Any] = json.loads(row[0])
        return spec

    # -- deploys and steps --------------------------------------------------------------

    def begin(self, deployment: str, kind: str, from_revision: int | None, to_revision: int) -> int:
        """Record the start of a deploy (``kind``: deploy, rollback, reconcile); returns its id."""
        cur = self.db.execute(
            "INSERT INTO deploys (deployment, kind, from_revision, to_revision, started) "
            "VALUES (?, ?, ?, ?, ?)",
            (deployment, kind, from_revision, to_revision, self.clock()),
        )
        assert cur.lastrowid is not None
        return cur.lastrowid

    @contextlib.contextmanager
    def step(self, deploy_id: int, name: str, **detail: Any) -> Iterator[Step]:
        """Record a step: its start now, its end (and failure, with the error) on exit."""
        seq = int(
            self.db.execute(
                "SELECT COALESCE(MAX(seq), 0) + 1 FROM steps WHERE deploy_id = ?", (deploy_id,)
            ).fetchone()[0]
        )
        self.db.execute(
            "INSERT INTO steps (deploy_id, seq, name, started, detail) VALUES (?, ?, ?, ?, ?)",
            (deploy_id, seq, name, self.clock(), json.dumps(detail)),
        )
        step = Step(deploy_id, seq, name, dict(detail))
        self.on_step(name)
        self._tell(step, "begin", None)
        outcome, error = "ok", None
        try:
            yield step
        except BaseException as exc:
            outcome, error = "failed", str(exc) or type(exc).__name__
            raise
        finally:
            self.db.execute(
                "UPDATE steps SET finished = ?, outcome = ?, error = ?, freed_bytes = ?, "
                "detail = ? WHERE deploy_id = ? AND seq = ?",
                (self.clock(), outcome, error, step.freed_bytes, json.dumps(step.detail),
                 deploy_id, seq),
            )  # fmt: skip
            self._tell(step, outcome, error)

    def _tell(self, step: Step, status: str, error: str | None) -> None:
        for watch in self.watchers:
            watch(step, status, error)

    def note(self, step: Step) -> None:
        """Write a running step's detail now (e.g. an engine's pid the moment it is spawned)."""
        self.db.execute(
            "UPDATE steps SET detail = ? WHERE deploy_id = ? AND seq = ?",
            (json.dumps(step.detail), step.deploy_id, step.seq),
        )

    def finish(self, deploy_id: int, outcome: str, error: str | None = None) -> None:
        if outcome not in OUTCOMES:
            raise ValueError(f"outcome {outcome!r} is not one of {OUTCOMES}")
        self.db.execute(
            "UPDATE deploys SET finished = ?, outcome = ?, error = ? WHERE id = ?",
            (self.clock(), outcome, error, deploy_id),
        )

    def ran_on(self, deploy_id: int, uuids: list[str]) -> None:
        """Record the GPUs (UUIDs) the revision that ``deploy_id`` switches in runs on: what
        stays true of it when indices move (a card added or removed)."""
        self.db.execute(
            "UPDATE deploys SET gpu_uuids = ? WHERE id = ?", (json.dumps(uuids), deploy_id)
        )

    def unfinished(self) -> list[dict[str, Any]]:
        """Deploys that never finished: the daemon stopped in the middle of them."""
        rows = self.db.execute("SELECT * FROM deploys WHERE finished IS NULL ORDER BY id")
        return [self._deploy(r) for r in rows.fetchall()]

    def history(self, deployment: str | None = None, limit: int = 50) -> list[dict[str, Any]]:
        """The latest deploys, newest first, each with its steps and their durations."""
        if deployment is None:
            rows = self.db.execute("SELECT * FROM deploys ORDER BY id DESC LIMIT ?", (limit,))
        else:
            rows = self.db.execute(
                "SELECT * FROM deploys WHERE deployment = ? ORDER BY id DESC LIMIT ?",
                (deployment, limit),
            )
        return [self._deploy(r) for r in rows.fetchall()]

    def record(self, deploy_id: int) -> dict[str, Any] | None:
        """One deploy, with its steps (None: no such deploy)."""
        row = self.db.execute("SELECT * FROM deploys WHERE id = ?", (deploy_id,)).fetchone()
        return None if row is None else self._deploy(row)

    def _deploy(self, row: sqlite3.Row) -> dict[str, Any]:
        doc = dict(row)
        doc["gpu_uuids"] = _uuids(doc["gpu_uuids"])
        doc["duration_s"] = None if doc["finished"] is None else doc["finished"] - doc["started"]
        steps = self.db.execute(
            "SELECT * FROM steps WHERE deploy_id = ? ORDER BY seq", (doc["id"],)
        ).fetchall()
        doc["steps"] = []
        for s in steps:
            step = dict(s)
            step["detail"] = _detail(step["detail"])
            step["duration_s"] = None if s["finished"] is None else s["finished"] - s["started"]
            doc["steps"].append(step)
        return doc

    # -- what is serving ---------------------------------------------------------------

    def set_current(
        self,
        deployment: str,
        revision: int,
        engine_pid: int | None = None,
        engine_start: float | None = None,
        url: str | None = None,
    ) -> None:
        self.db.execute(
            "INSERT INTO current VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (deployment) DO UPDATE "
            "SET revision = excluded.revision, engine_pid = excluded.engine_pid, "
            "engine_start = excluded.engine_start, url = excluded.url, updated = excluded.updated",
            (deployment, revision, engine_pid, engine_start, url, self.clock()),
        )

    def clear_current(self, deployment: str) -> None:
        self.db.execute("DELETE FROM current WHERE deployment = ?", (deployment,))

    def processes(self) -> dict[int, tuple[float, str]]:
        """Every engine process the journal says the lab may own: pid → (start time, deployment).

        From the steps of unfinished deploys (each journals the processes it acts on before it
        acts) and from what each deployment serves. A pid is only ever acted on together with
        its start time, so a reused pid is never mistaken for the lab's.
        """
        out: dict[int, tuple[float, str]] = {}
        for deploy in self.unfinished():
            for step in deploy["steps"]:
                for pid, start in _pids(step["detail"]).items():
                    out[pid] = (start, deploy["deployment"])
        for cur in self.current():
            if cur.engine_pid and cur.engine_start is not None:
                out[cur.engine_pid] = (cur.engine_start, cur.deployment)
        return out

    def current(self) -> list[Current]:
        rows = self.db.execute(
            "SELECT deployment, revision, engine_pid, engine_start, url FROM current "
            "ORDER BY deployment"
        ).fetchall()
        return [Current(*r) for r in rows]

    # -- what a lab report needs ----------------------------------------------------------

    def prune(self, now: float | None = None) -> None:
        """Forget alerts that ended, serving figures and bench results older than
        :data:`KEEP_S` (at open, and hourly as figures are added)."""
        now = self.clock() if now is None else now
        cutoff = now - KEEP_S
        with self._tx():
            self.db.execute("DELETE FROM alerts WHERE ended < ?", (cutoff,))
            self.db.execute("DELETE FROM serving WHERE t < ?", (cutoff,))
            self.db.execute("DELETE FROM bench WHERE t < ?", (cutoff,))
        self._pruned = now

    def alert_fired(
        self, name: str, severity: str, labels: dict[str, str], summary: str, started: float
    ) -> int:
        """Record an alert that began firing at ``started``; returns its id for
        :meth:`alert_ended`."""
        cur = self.db.execute(
            "INSERT INTO alerts (name, severity, labels, summary, started) VALUES (?, ?, ?, ?, ?)",
            (name, severity, json.dumps(labels, sort_keys=True), summary, started),
        )
        assert cur.lastrowid is not None
        return cur.lastrowid

    def alert_ended(self, alert_id: int, t: float) -> None:
        self.db.execute(
            "UPDATE alerts SET ended = MAX(started, ?) WHERE id = ? AND ended IS NULL",
            (t, alert_id),
        )

    def close_open_alerts(self, t: float) -> int:
        """End every alert still open at ``t`` (left firing by a daemon that stopped or was
        killed: the next daemon evaluates its rules afresh); returns how many."""
        cur = self.db.execute("UPDATE alerts SET ended = MAX(started, ?) WHERE ended IS NULL", (t,))
        return cur.rowcount

    def alerts_since(self, t: float, limit: int = 10_000) -> list[dict[str, Any]]:
        """Alerts that fired and were still firing at or after ``t``, oldest first (the latest
        ``limit`` of them)."""
        rows = self.db.execute(
            "SELECT * FROM alerts WHERE ended IS NULL OR ended >= ? ORDER BY id DESC LIMIT ?",
            (t, limit),
        ).fetchall()
        return [{**dict(r), "labels": _detail(r["labels"])} for r in reversed(rows)]

    def add_serving(self, t: float, figures: dict[str, dict[str, float]]) -> None:
        """Record each deployment's serving figures at ``t`` (one row per deployment)."""
        with self._tx():
            self.db.executemany(
                "INSERT INTO serving VALUES (?, ?, ?)",
                [(t, name, json.dumps(f, sort_keys=True)) for name, f in figures.items()],
            )
        if t - self._pruned >= PRUNE_EVERY_S:
            self.prune(t)

    def serving_since(self, t: float, limit: int = 100_000) -> list[dict[str, Any]]:
        """Serving figures recorded at or after ``t``, oldest first (the latest ``limit``)."""
        rows = self.db.execute(
            "SELECT * FROM serving WHERE t >= ? ORDER BY t DESC, rowid DESC LIMIT ?", (t, limit)
        ).fetchall()
        return [{"t": r["t"], "deployment": r["deployment"], "figures": _detail(r["figures"])}
                for r in reversed(rows)]  # fmt: skip

    def add_bench(self, t: float, model: str, result: dict[str, Any]) -> int:
        """Record a bench result (the JSON ``labctl bench --json`` prints); returns its id."""
        cur = self.db.execute(
            "INSERT INTO bench (t, model, result) VALUES (?, ?, ?)", (t, model, json.dumps(result))
        )
        assert cur.lastrowid is not None
        return cur.lastrowid

    def bench_since(self, t: float, limit: int = 1000) -> list[dict[str, Any]]:
        """Bench results recorded at or after ``t``, oldest first (the latest ``limit``)."""
        rows = self.db.execute(
            "SELECT * FROM bench WHERE t >= ? ORDER BY id DESC LIMIT ?", (t, limit)
        ).fetchall()
        return [{**dict(r), "result": _detail(r["result"])} for r in reversed(rows)]

    def history_since(self, t: float, limit: int = 2000) -> list[dict[str, Any]]:
        """Deploys started at or after ``t``, newest first, as :meth:`history` has them."""
        rows = self.db.execute(
            "SELECT * FROM deploys WHERE started >= ? ORDER BY id DESC LIMIT ?", (t, limit)
        )
        return [self._deploy(r) for r in rows.fetchall()]

    def revisions_of(
        self, pairs: Iterable[tuple[str, int | None]]
    ) -> dict[str, dict[str, dict[str, Any]]]:
        """The specs of these (deployment, revision) pairs: deployment → revision (as a string,
        as JSON keys are) → spec. Pairs without a revision, or unknown, are left out."""
        out: dict[str, dict[str, dict[str, Any]]] = {}
        for deployment, number in sorted({p for p in pairs if p[1] is not None}):
            row = self.db.execute(
                "SELECT spec FROM revisions WHERE deployment = ? AND revision = ?",
                (deployment, number),
            ).fetchone()
            if row is not None:
                out.setdefault(deployment, {})[str(number)] = _detail(row[0])
        return out


def _detail(raw: str) -> dict[str, Any]:
    """A step's detail; a damaged one is shown as such rather than failing the whole history."""
    try:
        doc = json.loads(raw)
    except (ValueError, RecursionError, TypeError):
        return {"unreadable": str(raw)[:200]}
    return doc if isinstance(doc, dict) else {"unreadable": str(raw)[:200]}


def _uuids(raw: str | None) -> list[str] | None:
    """A deploy's GPU UUIDs (None: not recorded, as before schema 3 or for a deploy that
    switched nothing in)."""
    try:
        doc = json.loads(raw) if raw is not None else None
    except ValueError:
        return None
    return [str(u) for u in doc] if isinstance(doc, list) else None


def _pids(detail: dict[str, Any]) -> dict[int, float]:
    """The (pid, start time) pairs a step's detail names: ``pid``/``start`` and ``processes``."""
    out: dict[int, float] = {}
    pid, start = detail.get("pid"), detail.get("start")
    if isinstance(pid, int) and isinstance(start, (int, float)):
        out[pid] = float(start)
    procs = detail.get("processes")
    if isinstance(procs, dict):
        for key, value in procs.items():
            if str(key).isdigit() and isinstance(value, (int, float)):
                out[int(key)] = float(value)
    return out
