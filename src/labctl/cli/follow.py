"""Following a deploy the lab runs: ``labctl deploy`` and ``labctl rollback`` start one without
waiting for it, then watch it over the admin API's event stream until it ends.

The stream is opened before the deploy is asked for, so that none of its events is missed;
the deploy's ticket then picks its events out of everyone else's. On a terminal the watch is
a live display, redrawn four times a second (the step under way and its time, the steps done,
the engine's startup phases, its last log line and the weights loaded); elsewhere it is one
plain line per step and phase. If the stream drops, ``/api/deploys/{ticket}`` is polled
instead. The deploy belongs to the lab: a watcher that goes away (Ctrl-C) leaves it running.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
import json
import queue
import sys
import threading
import time
from typing import Any, TextIO
import urllib.request

from rich.console import Console, Group
from rich.live import Live
from rich.text import Text

from labctl import sse
from labctl.units import GiB

#: How a deploy ends, as its last ``deploy`` event says.
OUTCOMES = frozenset({"committed", "rolled_back", "failed", "refused", "interrupted"})
#: The steps that start an engine (whose startup reports the watch shows).
STARTS = frozenset({"start", "rollback"})
#: Seconds between polls of the ticket when the event stream is gone.
POLL_S = 0.5
#: Seconds between polls of the ticket while events come (a lost last event must not hang us).
CHECK_S = 2.0
#: Redraws of the live display per second.
REFRESH_HZ = 4

Call = Callable[..., Any]


class Events:
    """The admin API's event stream, read by a thread of its own into a queue.

    Opening it waits for the stream's first event (``hello``): from then on the lab sends
    this stream every event, so a deploy asked for afterwards is seen from its start.
    """

    def __init__(self, url: str, headers: dict[str, str], timeout: float = 30.0) -> None:
        req = urllib.request.Request(url.rstrip("/") + "/api/events", headers=headers)
        self._resp = urllib.request.urlopen(req, timeout=timeout)  # keep-alives come every 15 s
        self._split = sse.Splitter()
        self._queue: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self.ended = False
        first: list[dict[str, Any]] = []
        while not first:
            docs = self._read()
            if docs is None:
                raise OSError("the event stream ended before its first event")
            first = docs
        self.hello = first[0]
        for doc in first[1:]:
            self._queue.put(doc)
        threading.Thread(target=self._pump, name="labctl-events", daemon=True).start()

    def _read(self) -> list[dict[str, Any]] | None:
        """The events of one read (None: the stream ended)."""
        chunk = self._resp.read1(65536)
        if not chunk:
            return None
        out = []
        for raw in self._split.feed(chunk):
            payload = sse.data(raw)
            if payload is None:
                continue  # a keep-alive comment
            try:
                doc = json.loads(payload)
            except ValueError:
                continue
            if isinstance(doc, dict):
                out.append(doc)
        return out

    def _pump(self) -> None:
        try:
            while (docs := self._read()) is not None:
                for doc in docs:
                    self._queue.put(doc)
        except Exception:  # dropped (the lab went away, a read timed out): the watcher polls
            pass
        finally:
            self._queue.put(None)

    def take(self, timeout: float) -> list[dict[str, Any]]:
        """What came, waiting up to ``timeout`` for the first; sets :attr:`ended` at the end."""
        out: list[dict[str, Any]] = []
        try:
            doc = self._queue.get(timeout=timeout)
            while True:
                if doc is None:
                    self.ended = True
                    break
                out.append(doc)
                doc = self._queue.get_nowait()
        except queue.Empty:
            pass
        return out


@dataclass
class Step:
    name: str
    #: None while it runs; then ok or failed.
    outcome: str | None = None
    #: When it began (the lab's clock) and here (this machine's monotonic clock).
    started: float | None = None
    seen: float = field(default_factory=time.monotonic)
    duration: float | None = None
    error: str | None = None


@dataclass
class Watch:
    """What is known of one deploy, from its events (or its record, when polled)."""

    name: str
    ticket: str
    kind: str = "deploy"
    from_revision: int | None = None
    to_revision: int | None = None
    deploy_id: int | None = None
    outcome: str | None = None
    steps: list[Step] = field(default_factory=list)
    #: The engine's latest startup report, and the phases it reached, in order.
    startup: dict[str, Any] = field(default_factory=dict)
    phases: list[str] = field(default_factory=list)
    began: float = field(default_factory=time.monotonic)
    #: Plain lines, one per change (what a pipe gets).
    log: list[str] = field(default_factory=list)

    @property
    def running(self) -> Step | None:
        """The step under way, if one is."""
        return self.steps[-1] if self.steps and self.steps[-1].outcome is None else None

    def _note(self, text: str) -> None:
        self.log.append(f"{time.monotonic() - self.began:6.1f} s  {text}")

    # -- what comes in --------------------------------------------------------------------

    def event(self, e: dict[str, Any]) -> None:
        if e.get("ticket") != self.ticket:
            return
        kind = e.get("type")
        if kind == "deploy":
            self._deploy_event(e)
        elif kind == "step":
            self._step_event(e)
        elif kind == "startup":
            self._startup_event(e)

    def _deploy_event(self, e: dict[str, Any]) -> None:
        phase = e.get("phase")
        if phase == "queued":
            self._note(f"{self.name} {self.kind} queued (ticket {self.ticket})")
        elif phase == "begin":
            self.deploy_id, self.to_revision = e.get("deploy_id"), e.get("revision")
            self._note(f"{self.title()} begins")
        elif phase in OUTCOMES and self.outcome is None:
            self.outcome = str(phase)
            self._note(f"{self.kind} {phase}")  # its error ends the command, on stderr

    def _step_event(self, e: dict[str, Any]) -> None:
        name, status = str(e.get("step")), e.get("status")
        if status == "begin":
            self.steps.append(Step(name, started=e.get("time")))
            self.startup, self.phases = {}, []  # a start (or rollback) of its own
            self._note(f"{name} …")
            return
        step = next((s for s in reversed(self.steps) if s.name == name and s.outcome is None), None)
        if step is None:
            return
        step.outcome, step.error = str(status), e.get("error")
        if step.started is not None and e.get("time") is not None:
            step.duration = float(e["time"]) - float(step.started)
        self._note(self._step_line(step))

    def _startup_event(self, e: dict[str, Any]) -> None:
        running = self.running
        if running is None or running.name not in STARTS:
            return  # the old engine's last lines, as it stops
        before = self.startup.get("loaded_fraction") or 0.0
        self.startup = e
        elapsed = f"{e.get('elapsed') or 0:.1f} s"
        fraction = e.get("loaded_fraction")
        if fraction is not None and int(fraction * 4) > int(before * 4) and fraction < 1:
            self._note(f"engine: {self.loaded()} at {elapsed}")  # every quarter of the weights
        phase = e.get("phase")
        if phase and phase not in self.phases:
            self.phases.append(str(phase))
            loaded = self.loaded() if phase == "load_weights" else ""
            self._note(f"engine: {phase} done at {elapsed}" + (f" · {loaded}" if loaded else ""))

    def absorb(self, doc: dict[str, Any]) -> None:
        """The ticket as polled (the stream is gone): its record is the truth from here on."""
        record = doc.get("record") or {}
        if record:
            self.deploy_id, self.to_revision = record.get("id"), record.get("to_revision")
            self.from_revision = record.get("from_revision")
        for i, r in enumerate(record.get("steps") or []):
            if i >= len(self.steps):
                self.steps.append(Step(str(r["name"]), started=r.get("started")))
                self._note(f"{r['name']} …")
            step = self.steps[i]
            if r.get("outcome") and step.outcome is None:
                step.outcome, step.error = str(r["outcome"]), r.get("error")
                step.duration = r.get("duration_s")
                self._note(self._step_line(step))
        outcome = record.get("outcome")
        if outcome and self.outcome is None:
            self.outcome = str(outcome)
            self._note(f"{self.kind} {outcome}")

    # -- what goes out --------------------------------------------------------------------

    def title(self) -> str:
        frm = f"r{self.from_revision}" if self.from_revision else "-"
        to = f"r{self.to_revision}" if self.to_revision else "?"
        number = f"#{self.deploy_id} " if self.deploy_id else ""
        return f"{number}{self.name} {self.kind} {frm} → {to}"

    def _step_line(self, step: Step) -> str:
        took = f" ({step.duration:.3f} s)" if step.duration is not None else ""
        err = f": {_clip(step.error, 120)}" if step.error else ""
        return f"{step.name} {step.outcome}{took}{err}"

    def loaded(self) -> str:
        """The weights loaded, e.g. "3.20 / 14.90 GiB (21%)" ('' when the engine does not say)."""
        fraction = self.startup.get("loaded_fraction")
        if fraction is None:
            return ""
        total = self.startup.get("weight_bytes")
        done = self.startup.get("loaded_bytes")
        if total and done is not None:
            return f"{done / GiB:.2f} / {total / GiB:.2f} GiB ({fraction:.0%})"
        return f"weights {fraction:.0%} loaded"

    def render(self) -> Group:
        """The live display's frame."""
        now = time.monotonic()
        head = Text(self.title(), style="bold")
        head.append(f" · {now - self.began:.1f} s", style="dim")
        if self.deploy_id is None and self.outcome is None and now - self.began > 1:
            head.append("  queued behind another deploy on its GPUs", style="yellow")
        rows: list[Text] = [head]
        for s in self.steps:
            if s.outcome is None:
                row = Text(f"  … {s.name:<15}{now - s.seen:>8.1f} s", style="cyan")
            else:
                mark, style = ("✓", "green") if s.outcome == "ok" else ("✗", "red")
                took = f"{s.duration:.3f} s" if s.duration is not None else ""
                row = Text(f"  {mark} {s.name:<15}{took:>10}", style=style)
                if s.error:
                    row.append(f"  {_clip(s.error, 100)}", style="red")
            rows.append(row)
        running = self.running
        if running is not None and self.startup:
            rows.extend(self._engine_rows())
        return Group(*rows)

    def _engine_rows(self) -> list[Text]:
        e = self.startup
        line = Text("      engine ", style="dim")
        line.append(f"{e.get('elapsed') or 0:.1f} s", style="bold")
        done = " ".join(f"{p} ✓" for p in self.phases)
        doing = "loading weights" if e.get("loaded_fraction") is not None else "starting"
        line.append(f" · phases: {done}" if done else f" · {doing}")
        if loaded := self.loaded():
            line.append(f" · {loaded}", style="magenta")
        rows = [line]
        if e.get("line"):
            rows.append(
                Text(
                    f"      {_clip(str(e['line']), 160)}",
                    style="dim",
                    no_wrap=True,
                    overflow="ellipsis",
                )
            )
        return rows


def _clip(text: str, n: int = 200) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"


class Shown:
    """Where the watch shows: a live display on a terminal, plain lines on a pipe, or nothing."""

    def __init__(self, watch: Watch, out: TextIO | None) -> None:
        self.watch = watch
        self.out = out
        self.printed = 0
        self.live: Live | None = None
        console = Console(file=out, highlight=False, markup=False) if out is not None else None
        if console is not None and console.is_interactive:  # a terminal that takes cursor moves
            self.live = Live(console=console, auto_refresh=False, transient=True,
                             redirect_stdout=False, redirect_stderr=False)  # fmt: skip

    def __enter__(self) -> Shown:
        if self.live is not None:
            self.live.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, *exc: object) -> None:
        if self.live is not None:
            # the summary replaces the display at the end; a watcher leaving (Ctrl-C) keeps it
            self.live.transient = kind is None
            self.live.stop()

    def update(self) -> None:
        if self.live is not None:
            self.live.update(self.watch.render(), refresh=True)
        elif self.out is not None:
            for line in self.watch.log[self.printed :]:
                print(line, file=self.out, flush=True)
        self.printed = len(self.watch.log)


class Detached(Exception):
    """Ctrl-C while following: the deploy goes on in the lab (``ticket`` None: the lab had not
    answered the request yet, so whether it began is not known here)."""

    def __init__(self, ticket: str | None) -> None:
        super().__init__(ticket)
        self.ticket = ticket


def watch(
    url: str, name: str, action: str, body: dict[str, Any], call: Call,
    headers: dict[str, str], out: TextIO | None,
) -> dict[str, Any]:  # fmt: skip
    """Ask for ``action`` (deploy, rollback) on ``name`` without waiting, and follow it to its
    end, shown on ``out`` (None: nowhere). Returns ``/api/deploys/{ticket}`` once it is done.

    Raises:
        LabError: the request was refused (as ``call`` raises it), or the lab went away.
        Detached: Ctrl-C; the deploy goes on in the lab.
    """
    ticket = None
    try:
        try:
            events: Events | None = Events(url, headers)
        except (OSError, ValueError):
            events = None  # the request below says why, if the lab is not there; else we poll
        # (the stream is not closed at the end: its reader thread goes with the process)
        started = call(url, "POST", f"/api/deployments/{name}/{action}",
                       {**body, "wait": False}, timeout=60)  # fmt: skip
        ticket = str(started["ticket"])
        w = Watch(name, ticket, action)
        if events is not None:
            current = [d for d in events.hello.get("deployments", []) if d.get("name") == name]
            w.from_revision = current[0].get("revision") if current else None
        path = f"/api/deploys/{ticket}"
        with Shown(w, out) as shown:
            return _follow(w, events, lambda: call(url, "GET", path, timeout=10), shown)
    except KeyboardInterrupt:
        raise Detached(ticket) from None


def _follow(
    w: Watch, events: Events | None, poll: Callable[[], dict[str, Any]], shown: Shown
) -> dict[str, Any]:
    last_poll = 0.0
    while True:
        if events is not None:
            for e in events.take(1 / REFRESH_HZ):
                w.event(e)
            if events.ended:
                events = None
        else:
            time.sleep(1 / REFRESH_HZ)
        now = time.monotonic()
        every = POLL_S if events is None else 1 / REFRESH_HZ if w.outcome else CHECK_S
        if now - last_poll >= every:
            last_poll = now
            doc = poll()
            done = doc.get("state") == "done"
            if events is None or done:
                w.absorb(doc)
            if done:
                shown.update()
                return doc
        shown.update()


def stream_for(as_json: bool) -> TextIO | None:
    """Where a watch shows: stdout, or with ``--json`` (stdout holds the one document) the
    terminal on stderr, or nothing."""
    if not as_json:
        return sys.stdout
    return sys.stderr if sys.stderr.isatty() else None
