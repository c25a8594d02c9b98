"""The standalone exporter: a sampler, its collector and an HTTP listener.

The daemon embeds the same sampler and collector on its own listener; this is
what ``labctl exporter`` runs where only telemetry is wanted.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
import socket
import socketserver
import threading
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CONTENT_TYPE_LATEST
from prometheus_client.registry import CollectorRegistry

from labctl.errors import UsageError
from labctl.telemetry.collector import TelemetryCollector
from labctl.telemetry.sampler import Sampler


def parse_listen(text: str, default_port: int = 9400) -> tuple[str, int]:
    """``HOST:PORT``, ``:PORT``, ``HOST`` or ``[::1]:PORT`` as a host and a port.

    Raises:
        UsageError: the port is not a number from 0 to 65535.
    """
    host, port_text = text, ""
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port_text = rest.removeprefix(":")
    elif text.count(":") == 1:
        host, port_text = text.split(":")
    host = host or "127.0.0.1"
    if not port_text:
        return host, default_port
    if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise UsageError(
            f"--listen {text!r}: the port must be a number from 0 to 65535, e.g. 127.0.0.1:9400"
        )
    return host, int(port_text)


def registry_for(sampler: Sampler, label_style: str = "dcgm") -> CollectorRegistry:
    """A registry holding only the telemetry collector (no process or platform extras)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(TelemetryCollector(sampler, label_style=label_style))
    return registry


class _Server(socketserver.ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _Server6(_Server):
    address_family = socket.AF_INET6


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        return None  # one line per scrape is noise; failures show in the metrics


def metrics_app(collector: TelemetryCollector) -> Callable[..., Iterable[bytes]]:
    """A WSGI app serving the collector's rendering at ``/metrics`` (and ``/``)."""

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if environ.get("PATH_INFO", "/") not in ("/", "/metrics"):
            start_response("404 Not Found", [("Content-Type", "text/plain")])
            return [b"labctl exporter serves /metrics\n"]
        gzipped = "gzip" in environ.get("HTTP_ACCEPT_ENCODING", "")
        body = collector.render(gzipped=gzipped)
        headers = [("Content-Type", CONTENT_TYPE_LATEST), ("Content-Length", str(len(body)))]
        if gzipped:
            headers.append(("Content-Encoding", "gzip"))
        start_response("200 OK", headers)
        return [body]

    return app


@dataclass
class Exporter:
    sampler: Sampler
    server: WSGIServer
    thread: threading.Thread

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        host = host.decode() if isinstance(host, bytes) else str(host)
        shown = f"[{host}]" if ":" in host else host
        return f"http://{shown}:{port}/metrics"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.sampler.stop()


def serve(sampler: Sampler, host: str, port: int, label_style: str = "dcgm") -> Exporter:
    """Start sampling and serve ``/metrics`` on ``host:port`` (port 0 picks a free one).

    Raises:
        UsageError: the address is taken or cannot be bound.
    """
    app = metrics_app(TelemetryCollector(sampler, label_style=label_style))
    sampler.start()
    try:
        server = make_server(
            host,
            port,
            app,
            server_class=_Server6 if ":" in host else _Server,
            handler_class=_QuietHandler,
        )
    except OSError as exc:
        sampler.stop()
        raise UsageError(
            f"cannot listen on {host}:{port} ({exc.strerror or exc}); pick another --listen"
        ) from exc
    thread = threading.Thread(target=server.serve_forever, name="labctl-exporter", daemon=True)
    thread.start()
    return Exporter(sampler, server, thread)
