"""``labctl bench``: drive an OpenAI-compatible endpoint and report as ``vllm bench serve`` does;
with ``--backend openvla``, run simulated robots' control loops against OpenVLA's ``/act``."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
import dataclasses
import json
import math
import os
from pathlib import Path
import signal
import sys
from typing import Any

import click
from rich.console import Console
from rich.live import Live
from rich.table import Table

from labctl.cli.benchrecord import record, record_option
from labctl.cli.output import console, emit_json, warn
from labctl.errors import BenchError, UsageError

SLO_KEYS = ("ttft", "tpot", "e2el")
#: How long robots send when neither --duration nor --num-prompts is given (seconds).
DEFAULT_DURATION_S = 10.0


def parse_goodput(values: tuple[str, ...]) -> dict[str, float] | None:
    """``ttft:300 tpot:50`` (one or several arguments, space or comma separated) → ms per key."""
    out: dict[str, float] = {}
    for value in values:
        for pair in value.replace(",", " ").split():
            key, sep, ms = pair.partition(":")
            if not sep or key not in SLO_KEYS:
                raise UsageError(
                    f"--goodput {pair!r}: use KEY:MS with KEY one of ttft, tpot, e2el (e.g. ttft:500)"
                )
            try:
                limit = float(ms)
            except ValueError:
                limit = -1.0
            if not limit > 0:
                raise UsageError(f"--goodput {pair!r}: the limit must be a positive number of ms")
            out[key] = limit
    return out or None


def parse_sweep(value: str | None) -> tuple[str, list[float]] | None:
    """``rate=1,2,4``, ``concurrency=1,8,64`` or (robots) ``robots=1,2,4,8``."""
    if value is None:
        return None
    name, sep, rest = value.partition("=")
    if not sep or name not in ("rate", "concurrency", "robots"):
        raise UsageError(f"--sweep {value!r}: use rate=V1,V2,… or concurrency=V1,V2,… "
                         "(with --backend openvla, robots=N1,N2,…)")  # fmt: skip
    values: list[float] = []
    for part in rest.split(","):
        try:
            v = float(part)
        except ValueError:
            raise UsageError(f"--sweep {value!r}: {part!r} is not a number") from None
        whole = name in ("concurrency", "robots")
        if not v > 0 or (whole and (math.isinf(v) or v != int(v))):
            raise UsageError(
                f"--sweep {value!r}: {part!r} must be a positive "
                + ("whole number" if whole else "number (or inf)")
            )
        values.append(v)
    return name, values


def _progress_view(p: Any, label: str) -> Table:
    t = Table.grid(padding=(0, 2))
    if p.robots:  # one line that wraps on a narrow terminal rather than squeezing columns
        latency = p.median_latency_ms()
        parts = [
            f"[bold]{label}[/]" if label else "",
            p.phase,
            f"{p.robots} robot{'s' if p.robots != 1 else ''}",
            f"sent {p.sent}/{p.total}",
            f"completed {p.completed}",
            f"[red]failed {p.failed}[/]" if p.failed else "failed 0",
            f"in flight {p.in_flight}",
            f"{p.rate():.1f} answers/s",
            f"p50 latency {latency:.1f} ms" if latency is not None else "p50 latency –",
            f"[red]deadline misses {p.misses}[/]" if p.misses else "deadline misses 0",
        ]
        t.add_row("  ".join(part for part in parts if part))
        return t
    ttft = p.median_ttft_ms()
    t.add_row(
        f"[bold]{label}[/]" if label else "",
        f"{p.phase}",
        f"sent {p.sent}/{p.total}",
        f"completed {p.completed}",
        f"[red]failed {p.failed}[/]" if p.failed else "failed 0",
        f"in flight {p.in_flight}",
        f"{p.rate():.1f} req/s",
        f"p50 TTFT {ttft:.1f} ms" if ttft is not None else "p50 TTFT –",
    )
    return t


def _run_one(
    config: Any, label: str, show: bool, clips: Any = None, frames: Any = None
) -> dict[str, Any]:
    """One run with a live display on stderr; Ctrl-C stops it and keeps what was measured."""
    from labctl.bench.run import make_runner, new_loop

    loop, selector = new_loop()
    err = Console(stderr=True)
    live = Live(console=err, auto_refresh=False, transient=True) if show else None
    interrupts = 0

    def tick(p: Any) -> None:
        if live is not None:
            live.update(_progress_view(p, label), refresh=True)

    runner = make_runner(config, tick if show else None, clips, frames)

    def on_sigint() -> None:
        nonlocal interrupts
        interrupts += 1
        if interrupts > 1:
            os._exit(130)
        click.echo("labctl: stopping; writing partial results (Ctrl-C again to quit now)", err=True)
        runner.stop.set()

    loop.add_signal_handler(signal.SIGINT, on_sigint)
    loop.add_signal_handler(signal.SIGTERM, on_sigint)
    try:
        if live is not None:
            live.start()
        return loop.run_until_complete(runner.run(selector))
    finally:
        if live is not None:
            live.stop()
        loop.remove_signal_handler(signal.SIGINT)
        loop.remove_signal_handler(signal.SIGTERM)
        loop.close()


def _print_report(doc: dict[str, Any]) -> None:
    out = console()
    out.print("============ Serving Benchmark Result ============")
    rows: list[tuple[str, Any]] = [
        ("Successful requests:", doc["completed"]),
        ("Failed requests:", doc["failed"]),
    ]
    if doc.get("cut"):
        rows.append(("Cut short by the interrupt:", doc["cut"]))
    if doc.get("max_concurrency") is not None:
        rows.append(("Maximum request concurrency:", doc["max_concurrency"]))
    if doc["request_rate"] != "inf":
        rows.append(("Request rate configured (RPS):", f"{doc['request_rate']:.2f}"))
    rows += [
        ("Benchmark duration (s):", f"{doc['duration']:.2f}"),
        ("Total input tokens:", doc["total_input_tokens"]),
        ("Total generated tokens:", doc["total_output_tokens"]),
        ("Request throughput (req/s):", f"{doc['request_throughput']:.2f}"),
    ]
    if doc.get("request_goodput") is not None:
        rows.append(("Request goodput (req/s):", f"{doc['request_goodput']:.2f}"))
    rows += [
        ("Output token throughput (tok/s):", f"{doc['output_throughput']:.2f}"),
        ("Peak output token throughput (tok/s):", f"{doc['max_output_tokens_per_s']:.2f}"),
        ("Peak concurrent requests:", doc["max_concurrent_requests"]),
    ]
    if "audio_seconds" in doc:
        rows += [
            ("RTFx (Inverse Real-Time Factor):", f"{doc['rtfx']:.2f}"),
            ("Total audio (s):", f"{doc['audio_seconds']:.2f}"),
        ]
    rows += [
        ("Total token throughput (tok/s):", f"{doc['total_token_throughput']:.2f}"),
        ("Streamed chunks/s:", f"{doc['chunk_throughput']:.0f}"),
    ]
    if "non_streamed_responses" in doc:
        streamed = doc["completed"] - doc["non_streamed_responses"]
        rows.append(("Streamed answers:", f"{streamed} of {doc['completed']}"))
    if not doc["completed"]:
        rows = [*rows[:2], ("Benchmark duration (s):", f"{doc['duration']:.2f}")]
    for name, value in rows:
        out.print(f"{name:<40} {value}")
    for key, title in (("ttft", "Time to First Token"), ("tpot", "Time per Output Token (excl. 1st token)"),
                       ("itl", "Inter-token Latency"), ("e2el", "End-to-end Latency"),
                       ("client_queue_time", "Client-side Queueing")):  # fmt: skip
        if f"mean_{key}_ms" not in doc or not doc["completed"]:
            continue
        out.print(f"{' ' + title + ' ':-^50}")
        name = key.upper() if key != "client_queue_time" else "Client Queue Time"
        for stat in ("mean", "median", *[k.split("_", 1)[0] for k in doc if k.endswith(f"_{key}_ms") and k.startswith("p") and k.split("_", 1)[1] == f"{key}_ms"]):  # fmt: skip
            label = stat.capitalize() if stat in ("mean", "median") else stat.upper()
            out.print(f"{label + ' ' + name + ' (ms):':<40} {doc[f'{stat}_{key}_ms']:.2f}")
    buckets = doc.get("e2el_by_audio_bucket") or {}
    if buckets and doc["completed"]:
        out.print(f"{' E2EL by Audio Length ':-^50}")
        out.print(
            f"{'bucket':<10}{'done':>6}{'audio s':>10}{'mean ms':>12}{'p50 ms':>12}{'p95 ms':>12}"
        )
        for name, row in buckets.items():
            out.print(f"{name:<10}{row['completed']:>6}{row['audio_seconds']:>10.1f}"
                      f"{row['mean_e2el_ms']:>12.2f}{row['median_e2el_ms']:>12.2f}"
                      f"{row['p95_e2el_ms']:>12.2f}")  # fmt: skip
    check = doc["client_check"]
    out.print(f"{' Client self-check ':-^50}")
    for label, key in (("P99 timestamp error (ms):", "timestamp_error_p99_ms"),
                       ("P99 read lag (ms):", "read_lag_p99_ms"),
                       ("P99 event-loop busy (ms):", "event_loop_busy_p99_ms")):  # fmt: skip
        value = check[key]
        out.print(f"{label:<40} {'n/a' if value is None else f'{value:.3f}'}")
    out.print(f"{'Timestamps from:':<40} {check['timestamps']}")
    out.print(f"{'Client limited:':<40} {'YES' if doc['client_limited'] else 'no'}")
    if doc["errors_by_reason"]:
        out.print(f"{' Failures ':-^50}")
        for reason, n in doc["errors_by_reason"].items():
            out.print(f"{n:>6}  {reason}")
    out.print("=" * 50)


def _print_robots(doc: dict[str, Any]) -> None:
    """A robot run's summary (:func:`labctl.bench.control.summary_lines`)."""
    from labctl.bench.control import summary_lines

    out = console()
    for line in summary_lines(doc):
        out.print(line, markup=False, highlight=False)


#: Options that say how text or speech requests are made: not for robots.
TEXT_OPTIONS = ("request_rate", "burstiness", "max_concurrency", "input_len", "output_len",
                "range_ratio", "dataset", "endpoint", "goodput", "audio_dir", "audio_seconds",
                "percentiles")  # fmt: skip
#: Options only robots take.
ROBOT_OPTIONS = ("robots", "target_hz", "open_loop", "image_dir", "instruction", "unnorm_key",
                 "duration", "slo_ms")  # fmt: skip


def _given(name: str) -> bool:
    """Whether the user gave this option (not its default)."""
    source = click.get_current_context().get_parameter_source(name)
    return source not in (None, click.core.ParameterSource.DEFAULT)


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _check_robot_options(kw: dict[str, Any]) -> None:
    """Robots' options with robots only, and text's or speech's not with them."""
    robots = kw["backend"] == "openvla"
    if not robots:
        given = [n for n in ROBOT_OPTIONS if _given(n)]
        if given:
            raise UsageError(f"{_flag(given[0])} is for robots: add --backend openvla")
        return
    given = [n for n in TEXT_OPTIONS if _given(n)]
    if kw["more_slos"]:
        given.append("goodput")
    if given:
        raise UsageError(f"{_flag(given[0])} is not for robots: --backend openvla sends camera "
                         "frames at --target-hz from each of --robots N")  # fmt: skip
    if kw["duration"] is not None and _given("num_prompts"):
        raise UsageError("give --duration S or --num-prompts N, not both: the run lasts S "
                         "seconds or until N requests were sent")  # fmt: skip


def _write_json(path: Path, doc: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)


@click.command()
@click.option("--base-url", default="http://127.0.0.1:8000", show_default=True,
              help="the server (or labctl's gateway); /v1 is added. openvla: an OpenVLA server "
                   "(posts to URL/act) or the gateway's http://HOST:PORT/vla/NAME (posts to "
                   "/vla/NAME/act); a URL ending in /act is taken as it is")  # fmt: skip
@click.option("--model", help="model name to request (default: the first the server lists); "
                              "openvla: the report's label (default: the gateway URL's NAME)")  # fmt: skip
@click.option("--num-prompts", type=int, default=1000, show_default=True,
              help="requests in all (openvla: shared among the robots; default: --duration 10)")  # fmt: skip
@click.option("--request-rate", type=float, default=math.inf, show_default=True,
              help="requests/s, Poisson by default; inf sends all at once")  # fmt: skip
@click.option("--burstiness", type=float, default=1.0, show_default=True,
              help="gamma shape of the gaps: 1 is Poisson, <1 burstier")  # fmt: skip
@click.option("--max-concurrency", type=int, help="requests in flight at most")
@click.option("--input-len", type=int, default=1024, show_default=True)
@click.option("--output-len", type=int, default=128, show_default=True)
@click.option("--range-ratio", type=float, default=0.0, show_default=True,
              help="lengths uniform in len·(1±r)")  # fmt: skip
@click.option("--dataset", type=click.Path(path_type=Path),
              help="ShareGPT JSON or a JSONL of {\"prompt\": …, \"output_len\": …}")  # fmt: skip
@click.option("--endpoint", type=click.Choice(["completions", "chat"]),
              help="text endpoint  [default: completions]")  # fmt: skip
@click.option("--backend", type=click.Choice(["openai", "openai-chat", "openai-audio", "openvla"]),
              help="vLLM's backend names: openai (completions), openai-chat, openai-audio "
                   "(speech: the URL's /v1/audio/transcriptions or /translations); openvla: "
                   "robots posting camera frames to OpenVLA's /act")  # fmt: skip
@click.option("--audio-dir", type=click.Path(path_type=Path),
              help="openai-audio: a folder of audio files (WAV, FLAC, …) to send")  # fmt: skip
@click.option("--audio-seconds", metavar="S|S1,S2,…|LO-HI",
              help="openai-audio: generated clips of these lengths (seconds), e.g. 4.7, 2,5,12 or 1-30")  # fmt: skip
@click.option("--robots", type=int, default=1, show_default=True,
              help="openvla: simulated robots, each with its own control loop")  # fmt: skip
@click.option("--target-hz", type=float, default=5.0, show_default=True,
              help="openvla: requests (chunks) per second each robot sends")  # fmt: skip
@click.option("--open-loop", is_flag=True,
              help="openvla: send at every tick even with answers outstanding (default: closed "
                   "loop, the next frame after the last action and the next tick)")  # fmt: skip
@click.option("--image-dir", type=click.Path(path_type=Path),
              help="openvla: a folder of camera frames (PNG, JPEG) to send; default: generated "
                   "256×256 frames")  # fmt: skip
@click.option("--instruction",
              help="openvla: what the robot should do  [default: pick up the blue cup]")  # fmt: skip
@click.option("--unnorm-key",
              help="openvla: the dataset whose statistics un-normalize the action; 'none' sends "
                   "none (a checkpoint with one dataset's)  [default: bridge_orig]")  # fmt: skip
@click.option("--duration", type=float,
              help="openvla: seconds the robots send for (default 10 unless --num-prompts)")  # fmt: skip
@click.option("--slo-ms", type=float,
              help="openvla: the p99 action latency a sweep's robots per GPU must meet "
                   "[default: 1000/--target-hz, one period]")  # fmt: skip
@click.option("--goodput", multiple=True, metavar="KEY:MS",
              help="SLOs for goodput, e.g. 'ttft:500 tpot:50' (keys ttft, tpot, e2el)")  # fmt: skip
@click.option("--sweep", metavar="rate|concurrency|robots=V1,V2,…",
              help="one run per value; plots against it with --plot (robots: openvla; prints "
                   "the robots per GPU at --target-hz with p99 within --slo-ms and no failures)")  # fmt: skip
@click.option("--warmup", type=int, default=0, show_default=True,
              help="requests sent first and not measured")  # fmt: skip
@click.option("--api-key", envvar="OPENAI_API_KEY", help="bearer token [env OPENAI_API_KEY]")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--timeout", type=float, default=600.0, show_default=True,
              help="seconds a request may take")  # fmt: skip
@click.option("--percentiles", default="99", show_default=True,
              help="percentiles to report, e.g. 50,90,99")  # fmt: skip
@click.option("--save-detailed", is_flag=True, help="keep per-request arrays in the JSON")
@click.option("--json-out", type=click.Path(path_type=Path), help="write the result JSON here")
@click.option("--plot", type=click.Path(path_type=Path), help="write a PNG here")
@click.option("--json", "as_json", is_flag=True, help="print the result JSON on stdout")
@record_option
@click.argument("more_slos", nargs=-1, metavar="")
def bench(**kw: Any) -> None:
    """Measure TTFT, TPOT, ITL and E2EL of an OpenAI-compatible server under load.

    Field names and definitions are vLLM's `vllm bench serve`. The run is marked
    client_limited when the client itself read responses more than 1 ms late (p99).
    With --backend openai-audio it posts audio clips to a transcription endpoint
    and adds rtfx, audio_seconds and E2E latency by audio length. With --backend
    openvla it runs --robots N control loops at --target-hz against OpenVLA's /act
    and reports action latency, achieved Hz (per chunk and per action), jitter and
    deadline misses.
    """
    from labctl.bench.run import DETAIL_FIELDS, BenchConfig

    stray = [a for a in kw["more_slos"] if a.split(":", 1)[0] not in SLO_KEYS]
    if stray:
        raise UsageError(f"unexpected argument {stray[0]!r}: labctl bench takes only options")
    sweep = parse_sweep(kw["sweep"])
    _check_robot_options(kw)
    try:
        percentiles = tuple(float(p) for p in kw["percentiles"].split(","))
    except ValueError:
        raise UsageError(
            f"--percentiles {kw['percentiles']!r}: use numbers, e.g. 50,90,99"
        ) from None
    if not all(0 < p < 100 for p in percentiles):
        raise UsageError(f"--percentiles {kw['percentiles']!r}: each must be between 0 and 100")
    for flag in ("json_out", "plot"):
        path = kw[flag]
        if path is not None and not path.resolve().parent.is_dir():
            raise UsageError(f"--{flag.replace('_', '-')} {path}: its folder does not exist")
    if kw["plot"] is not None and kw["plot"].suffix.lower() != ".png":
        raise UsageError(f"--plot {kw['plot']}: give a .png file name")
    if kw["dataset"] is not None and not kw["dataset"].is_file():
        raise UsageError(f"--dataset {kw['dataset']}: no such file")
    if kw["backend"] == "openvla":
        _bench_robots(kw, sweep)
        return
    if sweep is not None and sweep[0] == "robots":
        raise UsageError("--sweep robots=… is for robots: add --backend openvla")
    backend, endpoint = kw["backend"], kw["endpoint"]
    if backend == "openai-audio" and endpoint is not None:
        raise UsageError("--endpoint is for text: openai-audio posts to the --base-url's "
                         "/v1/audio/transcriptions (or /translations)")  # fmt: skip
    endpoint = endpoint or ("chat" if backend == "openai-chat" else "completions")
    seconds: tuple[float, ...] = ()
    if kw["audio_seconds"] is not None:
        from labctl.bench.audio import parse_seconds

        seconds = parse_seconds(kw["audio_seconds"], kw["num_prompts"], kw["seed"])
    config = BenchConfig(
        base_url=kw["base_url"], model=kw["model"] or "", num_prompts=kw["num_prompts"],
        request_rate=kw["request_rate"], burstiness=kw["burstiness"],
        max_concurrency=kw["max_concurrency"], input_len=kw["input_len"],
        output_len=kw["output_len"], range_ratio=kw["range_ratio"], dataset=kw["dataset"],
        endpoint=endpoint, goodput=parse_goodput(kw["goodput"] + kw["more_slos"]), warmup=kw["warmup"],
        api_key=kw["api_key"], seed=kw["seed"], timeout=kw["timeout"], percentiles=percentiles,
        backend=backend, audio_dir=kw["audio_dir"], audio_seconds=seconds,
    )  # fmt: skip
    config.validate()
    clips = None
    if config.audio:  # every file is read and checked before anything is sent
        from labctl.bench.speech import load_clips

        clips = load_clips(config)
    if not kw["model"]:
        config = dataclasses.replace(config, model=_first_model(config))
    if not kw["burstiness"] > 0:
        raise UsageError(f"--burstiness {kw['burstiness']} must be positive; 1 is Poisson")
    show = _show(kw)
    points: list[tuple[str, Any]] = [("", config)]
    if sweep is not None:
        name, values = sweep
        points = [
            (
                f"{name}={v:g}",
                dataclasses.replace(config, request_rate=v)
                if name == "rate"
                else dataclasses.replace(config, max_concurrency=int(v)),
            )
            for v in values
        ]

    def line(label: str, doc: dict[str, Any]) -> str:
        rtfx = f", RTFx {doc['rtfx']:.2f}" if "audio_seconds" in doc else ""
        return (f"{label}: completed {doc['completed']}, failed {doc['failed']}, median TTFT "
                f"{doc['median_ttft_ms']:.1f} ms, median TPOT {doc['median_tpot_ms']:.2f} ms, "
                f"{doc['output_throughput']:.0f} tok/s{rtfx}")  # fmt: skip

    runs, interrupted = _run_points(points, show, kw["as_json"] or sweep is None, line,
                                    clips=clips)  # fmt: skip
    if kw["plot"] is not None:
        from labctl.bench.plot import plot_run, plot_sweep

        if sweep is not None:
            plot_sweep(runs, sweep[0], kw["plot"])
        else:
            plot_run(runs[0], kw["plot"])
    if not kw["save_detailed"]:
        for doc in runs:
            for key in DETAIL_FIELDS:
                doc.pop(key, None)
    result: Any = runs[0] if sweep is None else {
        "sweep": {"parameter": sweep[0], "values": sweep[1][: len(runs)]},
        "interrupted": interrupted,
        "runs": runs,
    }  # fmt: skip
    _finish(kw, runs, result, interrupted, _print_report if sweep is None else None)


def _finish(
    kw: dict[str, Any],
    runs: list[dict[str, Any]],
    result: Any,
    interrupted: bool,
    printer: Callable[[dict[str, Any]], None] | None,
) -> None:
    """Write, print and record the result, warn, and exit as the runs went."""
    if kw["json_out"] is not None:
        _write_json(kw["json_out"], result)
    if kw["as_json"]:
        emit_json(result)
    elif printer is not None:
        printer(runs[0])
    for doc in runs:
        for w in doc["warnings"]:
            warn(w)
    record(kw, runs, result, interrupted)
    if interrupted:
        sys.exit(130)
    if all(doc["completed"] == 0 for doc in runs):
        reasons = runs[-1]["errors_by_reason"]
        top = next(iter(reasons), "no request was sent")
        raise BenchError(f"all {sum(d['failed'] for d in runs)} requests failed: {top}")


def _show(kw: dict[str, Any]) -> bool:
    """Whether to draw live progress: on a terminal, unless the JSON goes there."""
    show = sys.stderr.isatty() and not (kw["json_out"] and not sys.stdout.isatty())
    return show and not kw["as_json"]


def _bench_robots(kw: dict[str, Any], sweep: tuple[str, list[float]] | None) -> None:
    """``--backend openvla``: one run of the robots' control loops, or a sweep over how many."""
    from labctl.bench.control import headline, robots_per_gpu
    from labctl.bench.frames import deployment
    from labctl.bench.robots import load_frames
    from labctl.bench.run import DETAIL_FIELDS, BenchConfig

    if sweep is not None and sweep[0] != "robots":
        raise UsageError(f"--sweep {sweep[0]}=… is for text and speech: robots sweep how many "
                         "there are, e.g. --sweep robots=1,2,4,8")  # fmt: skip
    duration = kw["duration"]
    if duration is None and not _given("num_prompts"):
        duration = DEFAULT_DURATION_S
    extra: dict[str, Any] = {}
    if kw["instruction"] is not None:
        extra["instruction"] = kw["instruction"]
    if kw["unnorm_key"] is not None:
        extra["unnorm_key"] = None if kw["unnorm_key"].lower() == "none" else kw["unnorm_key"]
    config = BenchConfig(
        base_url=kw["base_url"], model=kw["model"] or deployment(kw["base_url"]) or "",
        num_prompts=kw["num_prompts"], warmup=kw["warmup"], api_key=kw["api_key"],
        seed=kw["seed"], timeout=kw["timeout"], backend="openvla", robots=kw["robots"],
        target_hz=kw["target_hz"], open_loop=kw["open_loop"], image_dir=kw["image_dir"],
        duration=duration, slo_ms=kw["slo_ms"], **extra,
    )  # fmt: skip
    config.validate()
    points: list[tuple[str, Any]] = [("", config)]
    if sweep is not None:
        points = [(f"robots={n:g}", dataclasses.replace(config, robots=int(n))) for n in sweep[1]]
        for _, point in points:
            point.validate()
    frames = load_frames(config)  # every image is read and checked before anything is sent
    show = _show(kw)

    def line(label: str, doc: dict[str, Any]) -> str:
        return (f"{label}: completed {doc['completed']}, failed {doc['failed']}, achieved "
                f"{doc['achieved_hz']:.2f} Hz per robot (chunks/s), "
                f"{doc['achieved_hz_per_action']:.2f} actions/s, p99 "
                f"{doc['action_latency_ms_p99']:.1f} ms, deadline misses "
                f"{doc['deadline_miss_ratio']:.1%}")  # fmt: skip

    runs, interrupted = _run_points(points, show, kw["as_json"] or sweep is None, line,
                                    frames=frames)  # fmt: skip
    if kw["plot"] is not None:
        from labctl.bench.plot import plot_robots_run, plot_robots_sweep

        if sweep is not None:
            plot_robots_sweep(runs, kw["plot"], config.slo)
        else:
            plot_robots_run(runs[0], kw["plot"])
    if not kw["save_detailed"]:
        for doc in runs:
            for key in DETAIL_FIELDS:
                doc.pop(key, None)
    result: Any = runs[0]
    if sweep is not None:
        result = {
            "sweep": {"parameter": "robots", "values": [int(v) for v in sweep[1][: len(runs)]]},
            "interrupted": interrupted,
            "backend": "openvla",
            "target_hz": config.target_hz,
            "slo_ms": config.slo,
            "robots_per_gpu": robots_per_gpu(runs, config.slo),
            "headline": headline(runs, config.slo),
            "runs": runs,
        }
        if not kw["as_json"]:
            click.echo(result["headline"])
    _finish(kw, runs, result, interrupted, _print_robots if sweep is None else None)


def _run_points(
    points: list[tuple[str, Any]], show: bool, quiet: bool,
    line: Callable[[str, dict[str, Any]], str], **run: Any,
) -> tuple[list[dict[str, Any]], bool]:  # fmt: skip
    """Each point's run in turn (a line each unless ``quiet``), until one is interrupted."""
    runs: list[dict[str, Any]] = []
    for label, point in points:
        doc = _run_one(point, label, show, **run)
        runs.append(doc)
        if not quiet:
            click.echo(line(label, doc) + (" (client limited)" if doc["client_limited"] else ""),
                       err=show)  # fmt: skip
        if doc["interrupted"]:
            return runs, True
    return runs, False


def _first_model(config: Any) -> str:
    """The first model the server lists (GET /v1/models)."""
    from labctl.bench.audio import route
    from labctl.bench.http import Client, Endpoint, RequestFailed, call_json

    try:
        endpoint = route(config.base_url)[0] if config.audio else Endpoint.parse(config.base_url)
    except ValueError as exc:
        raise UsageError(str(exc)) from exc

    async def ask() -> Any:
        client = Client(endpoint, config.api_key)
        try:
            return await call_json(client, "GET", "/v1/models", limit_s=10)
        finally:
            client.close()

    try:
        status, doc = asyncio.run(ask())
    except RequestFailed as exc:
        raise BenchError(f"{exc}; is the server running? (or pass --model)") from exc
    data = doc.get("data") if isinstance(doc, dict) else None
    if status != 200 or not data or not isinstance(data[0], dict) or "id" not in data[0]:
        raise BenchError(f"{endpoint}/v1/models gave HTTP {status} and no model: pass --model")
    return str(data[0]["id"])
