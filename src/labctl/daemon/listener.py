"""The daemon's one listener: the gateway, the admin API, ``/metrics`` and the page, on one
address, and the URL it answers on; and the event loop it runs on."""

from __future__ import annotations

import asyncio
import gc

from aiohttp import web

from labctl.errors import ConfigError


async def listen(
    app: web.Application, host: str, port: int, idle_timeout: float
) -> tuple[web.AppRunner, str]:
    """Serve ``app`` on ``host:port`` (port 0: one the system picks); returns its runner
    and URL.

    Raises:
        ConfigError: the address cannot be listened on (taken, or not this machine's).
    """
    runner = web.AppRunner(
        app, access_log=None, handle_signals=False, handler_cancellation=True,
        keepalive_timeout=idle_timeout,
        lingering_time=1.0,  # after a 408 or 413, read what still comes for 1 s, not 10
    )  # fmt: skip
    await runner.setup()
    try:
        # a backlog for a burst of hundreds of clients: none waits out a SYN retry
        await web.TCPSite(runner, host, port, backlog=1024).start()
    except OSError as exc:
        await runner.cleanup()
        raise ConfigError(
            f"cannot listen on {host}:{port}: {exc.strerror or exc}; is another "
            "labctl up running? Pick another address with --listen"
        ) from exc
    bound = runner.addresses[0][1] if runner.addresses else port
    # what was built to serve (modules, config, routes, metrics) lasts as long as the lab:
    # out of the collector's sight, so that the full collections a busy gateway's requests
    # set off walk a third as many objects
    gc.freeze()
    return runner, f"http://{f'[{host}]' if ':' in host else host}:{bound}"


def event_loop() -> asyncio.AbstractEventLoop:
    """uvloop's event loop where installed (the gateway relays with less CPU), else asyncio's."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()
