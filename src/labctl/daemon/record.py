"""What the lab records for its reports, and the report's sources (``GET /api/report``).

The board keeps an hour of samples in memory; a report covers a week or a month. So on
every board tick the :class:`Recorder` writes to the journal the alerts that began or
stopped firing (keyed by name and labels), and every :func:`rollup_every` ticks each
deployment's latest serving figures. ``labctl bench`` run against the lab posts its result
(``POST /api/bench``), and :class:`Records` serves everything a report is built from.

Serving figures (``figures`` of a ``serving`` row), each a float, present where the board
has a value (a deployment shows only those of the API it serves):

- every deployment: ``requests_running``, ``requests_waiting`` (in the engine),
  ``requests_queued`` (in the gateway), ``kv`` (KV cache usage, 0–1), ``ttft_p50``,
  ``ttft_p99``, ``itl_p50``, ``itl_p99``, ``e2e_p50``, ``e2e_p99`` (seconds),
  ``tokens_completion``, ``tokens_prompt`` (tokens per second), ``gpu_memory_bytes`` (its
  engine's memory on all its GPUs);
- speech: ``rtfx`` and ``rtfx_floor`` (× real time), ``audio_seconds_per_second``,
  ``requests_per_second``, ``queued``, ``in_flight`` (latency by audio length is left out);
- actions (VLA): ``actions_per_second``, ``control_hz``, ``latency_p50``, ``latency_p90``,
  ``latency_p99``, ``deadline_seconds`` (seconds), ``deadline_miss_ratio`` (0–1),
  ``queued``, ``in_flight``.

Each is the mean of the board's values over the ticks since the previous rollup (rates and
percentiles the board's, over its rate window at each tick), so traffic between two
rollups counts; queues and KV usage also keep their peak, as ``<key>_max``
(:data:`PEAKS`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
import getpass
import json
import math
import os
from pathlib import Path
import socket
import time
from typing import Any

from aiohttp import web

import labctl
from labctl import jsontext
from labctl.config import MAX_FILE_BYTES, LabConfig, default_config
from labctl.daemon.api import api_error
from labctl.daemon.doctor import LabDoctor
from labctl.dashboard.board import Board
from labctl.deploy.journal import Journal
from labctl.errors import GpuError
from labctl.gpu.sample import GpuReading

#: Most ticks between two serving rollups: a minute at the default 5 s interval, and a few
#: seconds with the short intervals tests use.
MAX_ROLLUP_TICKS = 12
#: The report's default period (a week) and the longest it may ask for (seconds).
DEFAULT_SINCE_S = 7 * 86400
MAX_SINCE_S = 400 * 86400
#: Lines of each engine log in a report, and how much of its end is read for them.
LOG_LINES = 40
LOG_TAIL_BYTES = 256 * 1024
LOG_LINE_CHARS = 2000
#: Members and elements a posted bench result may hold (a --save-detailed run has
#: per-request arrays; the body's size is bounded by the gateway's max_body_bytes).
MAX_BENCH_ITEMS = 2_000_000


#: Figures whose peak over a rollup is kept beside their mean.
PEAKS = ("requests_running", "requests_waiting", "requests_queued", "kv", "queued", "in_flight")


def rollup_every(interval: float) -> int:
    """Ticks between serving rollups: a minute's worth, at most :data:`MAX_ROLLUP_TICKS`."""
    return min(MAX_ROLLUP_TICKS, max(1, round(60 / interval)))


def serving_figures(board: Board) -> dict[str, dict[str, float]]:
    """Per deployment, the board's latest serving figures (the keys the module lists)."""
    out: dict[str, dict[str, Any]] = {n: dict(f) for n, f in board.serving_now().items()}
    for name, speech in board.speech_now().items():
        out.setdefault(name, {}).update({k: v for k, v in speech.items() if k != "latency"})
    for name, vla in board.vla_now().items():
        out.setdefault(name, {}).update(vla)
    for labels, role, value in board.latest("gpu_memory"):
        if role == "deployment" and (dep := labels.get("deployment")):
            figures = out.setdefault(dep, {})
            figures["gpu_memory_bytes"] = figures.get("gpu_memory_bytes", 0.0) + value
    return {
        name: {k: float(v) for k, v in f.items()
               if isinstance(v, (int, float)) and math.isfinite(v)}
        for name, f in out.items() if name
    }  # fmt: skip


def _alert_key(doc: dict[str, Any]) -> tuple[str, str]:
    return doc["name"], json.dumps(doc["labels"], sort_keys=True)


def _rollup(seen: dict[str, list[float]]) -> dict[str, float]:
    """Each figure's mean over a rollup's ticks, and the peak of those in :data:`PEAKS`."""
    out = {key: sum(values) / len(values) for key, values in seen.items()}
    out |= {f"{key}_max": max(seen[key]) for key in PEAKS if key in seen}
    return out


class Recorder:
    """Writes alert transitions and serving rollups to the journal, told each board tick.

    An alert left open by a daemon that was killed is closed at ``started`` (this daemon's
    start): its rules are evaluated afresh, and one still true fires again as a new row.
    """

    def __init__(self, journal: Journal, board: Board, started: float) -> None:
        self.journal = journal
        self.board = board
        self.every = rollup_every(board.interval)
        self.ticks = 0
        #: Since the last rollup: per deployment, each figure's values.
        self.seen: dict[str, dict[str, list[float]]] = {}
        #: Alerts firing now: (name, labels) → their journal id.
        self.open: dict[tuple[str, str], int] = {}
        journal.close_open_alerts(started)

    def on_tick(self, tick: dict[str, Any]) -> None:
        """Record what ``tick`` (:meth:`Board.tick`'s document) changed."""
        t = float(tick["t"])
        firing = {_alert_key(a): a for a in tick["alerts"] if a["state"] == "firing"}
        for key in [k for k in self.open if k not in firing]:
            self.journal.alert_ended(self.open.pop(key), t)
        for key, a in firing.items():
            if key not in self.open:
                self.open[key] = self.journal.alert_fired(
                    a["name"], a["severity"], a["labels"], a["summary"], min(t, a["fires_at"])
                )
        for name, figures in serving_figures(self.board).items():
            seen = self.seen.setdefault(name, {})
            for figure, value in figures.items():
                seen.setdefault(figure, []).append(value)
        self.ticks += 1
        if self.ticks >= self.every:
            self.ticks = 0
            rollup = {name: _rollup(seen) for name, seen in self.seen.items()}
            self.seen = {}
            if rollup:
                self.journal.add_serving(t, rollup)

    def close(self, t: float) -> None:
        """End the alerts firing now (the daemon stops)."""
        for alert_id in self.open.values():
            self.journal.alert_ended(alert_id, t)
        self.open.clear()


@dataclass
class Records:
    """``POST /api/bench`` and ``GET /api/report``: the recorder's rows and the lab's facts."""

    journal: Journal
    board: Board
    config: LabConfig
    home: Path
    #: The daemon's URL (known once it listens).
    url: Callable[[], str]
    #: A GPU reading (the sampler's ``fresh``, given the oldest age to accept).
    read_gpus: Callable[[float], Awaitable[GpuReading]]
    #: ``/api/status``'s deployments.
    deployments: Callable[[], list[dict[str, Any]]]
    doctor: LabDoctor
    #: Takes the lab's secrets out of text that goes into a report.
    redact: Callable[[str], str]
    clock: Callable[[], float] = time.time
    started: float = field(default_factory=time.time)

    def __post_init__(self) -> None:
        self.recorder = Recorder(self.journal, self.board, self.started)

    def add_routes(self, r: web.UrlDispatcher) -> None:
        r.add_post("/api/bench", self.add_bench)
        r.add_get("/api/report", self.report)

    def close(self) -> None:
        self.recorder.close(self.clock())

    async def add_bench(self, request: web.Request) -> web.Response:
        """Keep a ``labctl bench --json`` result for the lab's reports; answers its id."""
        raw = await request.read()
        try:
            doc = await asyncio.to_thread(jsontext.loads, raw, max_items=MAX_BENCH_ITEMS)
        except ValueError as exc:
            raise api_error(400, f"the bench result is not valid JSON: {exc}") from None
        runs = doc.get("runs") if isinstance(doc, dict) else None
        if not isinstance(doc, dict) or not (
            isinstance(doc.get("completed"), int)
            or (isinstance(runs, list) and all(isinstance(x, dict) for x in runs))
        ):
            raise api_error(400, "the body must be a bench result as `labctl bench --json` "
                            "prints it: an object with completed, or a sweep's runs")  # fmt: skip
        first = runs[0] if runs else doc
        model = first.get("model_id")
        bench_id = self.journal.add_bench(self.clock(), model if isinstance(model, str) else "",
                                          doc)  # fmt: skip
        return web.json_response({"id": bench_id})

    async def report(self, request: web.Request) -> web.Response:
        """The sources of a lab report over the last ``?since=SECONDS`` (default a week)."""
        return web.json_response(await self.sources(_since(request.query.get("since"))))

    async def sources(self, seconds: float) -> dict[str, Any]:
        """The report's sources document over the last ``seconds``."""
        now = self.clock()
        since = now - seconds
        try:
            reading: GpuReading | None = await self.read_gpus(5.0)
        except GpuError:
            reading = None
        deployments = self.deployments()
        logs = {d["name"]: self.home / "logs" / f"{d['name']}-r{d['revision']}.log"
                for d in deployments if d["revision"] is not None}  # fmt: skip
        source = None if self.config.source == default_config().source else self.config.source
        text, fqdn, tails = await asyncio.gather(
            asyncio.to_thread(_config_text, source), asyncio.to_thread(socket.getfqdn),
            asyncio.to_thread(lambda: {n: tail(p) for n, p in logs.items()}),
        )  # fmt: skip
        deploys = self.journal.history_since(since)
        pairs = [
            (d["deployment"], r) for d in deploys for r in (d["from_revision"], d["to_revision"])
        ]
        report = self.doctor.report
        return {
            "generated": now,
            "since": since,
            "lab": {
                "url": self.url(), "config": source,
                "config_text": None if text is None else self.redact(text),
                "gpu_backend": reading.backend if reading else self.config.gpu_backend,
                "hostname": socket.gethostname(), "fqdn": fqdn, "user": _user(),
                "home": str(self.home), "version": labctl.__version__, "started": self.started,
            },
            "gpus": [] if reading is None else _gpus(reading),
            "deployments": deployments,
            "deploys": deploys,
            "revisions": self.journal.revisions_of(pairs),
            "alerts": self.journal.alerts_since(since),
            "serving": self.journal.serving_since(since),
            "bench": self.journal.bench_since(since),
            "doctor": None if report is None else report.to_json(),
            "logs": {n: [self.redact(line) for line in lines] for n, lines in tails.items()},
        }  # fmt: skip


def _since(raw: str | None) -> float:
    """``?since=``: the report's period in seconds."""
    if raw is None:
        return float(DEFAULT_SINCE_S)
    try:
        seconds = float(raw)
    except ValueError:
        seconds = math.nan
    if not 0 < seconds <= MAX_SINCE_S:  # NaN too
        raise api_error(400, f"since={raw[:20]!r}: give the period in seconds, more than 0 and "
                        f"at most {MAX_SINCE_S} (400 days), e.g. since=604800 for a week")  # fmt: skip
    return seconds


def _gpus(reading: GpuReading) -> list[dict[str, Any]]:
    return [{"index": d.index, "name": d.name, "uuid": d.uuid, "pci_bus_id": d.pci_bus_id,
             "memory_total_bytes": d.memory_total_bytes, "power_limit_watts": d.power_limit_watts,
             "driver_version": reading.driver_version, "cuda_driver_version": None}
            for d in reading.devices]  # fmt: skip


def _user() -> str:
    try:
        return getpass.getuser()
    except (OSError, KeyError):  # no login name, and no passwd entry for the uid
        return str(os.getuid())


def _config_text(source: str | None) -> str | None:
    """lab.toml's text as it is now (None: unreadable), or the embedded default's."""
    if source is None:
        return default_text()
    try:
        with open(source, "rb") as fh:
            return fh.read(MAX_FILE_BYTES).decode("utf-8", "replace")
    except OSError:
        return None


def default_text() -> str:
    """The embedded default lab as the lab.toml that loads it."""
    c = default_config()

    def value(v: Any) -> str:
        return ("true" if v else "false") if isinstance(v, bool) else json.dumps(v)

    lines = ["[lab]", f"listen = {value(c.listen)}", f"gpu_backend = {value(c.gpu_backend)}",
             f"sim_gpus = {value(c.sim_gpus)}"]  # fmt: skip
    for d in c.deployments:
        args = ", ".join(f"{k} = {value(v)}" for k, v in d.args.items())
        lines += ["", f"[deployments.{d.name}]", f"engine = {value(d.engine)}",
                  f"model = {value(d.model)}", f"gpus = {list(d.gpus)}", f"args = {{ {args} }}"]  # fmt: skip
    return "\n".join(lines) + "\n"


def tail(path: Path, lines: int = LOG_LINES) -> list[str]:
    """The last ``lines`` lines of ``path``, from at most its last :data:`LOG_TAIL_BYTES`
    (none if it cannot be read)."""
    try:
        with path.open("rb") as fh:
            size = fh.seek(0, os.SEEK_END)
            start = max(0, size - LOG_TAIL_BYTES)
            fh.seek(start)
            data = fh.read(size - start)
    except OSError:
        return []
    text = data.decode("utf-8", "replace").splitlines()
    if start > 0:
        text = text[1:]  # the first is cut
    return [line[:LOG_LINE_CHARS] for line in text[-lines:]]
