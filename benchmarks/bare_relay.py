"""The floor under any proxy written in Python: bytes relayed both ways, nothing parsed.

Each client connection gets its own connection to the upstream; what one side sends is
written to the other in the read callback that received it (uvloop, as labctl's daemon
runs), with the transports' own flow control. No HTTP is parsed, routed, admitted, counted
or rewritten: its CPU per relayed chunk is the read and write system calls and the event
loop around them, which a gateway cannot spend less than. `gateway_overhead.py` runs it
between the same client and twin as labctl's gateway, in the same run.

    python benchmarks/bare_relay.py LISTEN_PORT UPSTREAM_HOST UPSTREAM_PORT
"""

from __future__ import annotations

import asyncio
import sys

import uvloop


class Side(asyncio.Protocol):
    """One end of a relayed pair: what it reads goes out on its peer."""

    def __init__(self, peer: Side | None = None) -> None:
        self.peer = peer
        self.transport: asyncio.Transport | None = None
        #: What the client sent before its upstream connection was open.
        self.early: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        if self.peer is not None:  # the upstream side: the client's early bytes go now
            if self.peer.transport is None or self.peer.transport.is_closing():
                transport.close()  # the client went while this connected
                return
            self.peer.peer = self
            for data in self.peer.early:
                transport.write(data)  # type: ignore[attr-defined]
            self.peer.early.clear()

    def data_received(self, data: bytes) -> None:
        peer = self.peer
        if peer is None or peer.transport is None:
            self.early.append(data)
        else:
            peer.transport.write(data)

    # the peer's transport holds too much unsent: stop reading this side until it drains
    def pause_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.close()


async def main(port: int, host: str, upstream_port: int) -> None:
    loop = asyncio.get_running_loop()
    connecting: set[asyncio.Task[None]] = set()

    def accepted() -> Side:
        client = Side()

        async def connect() -> None:
            try:
                await loop.create_connection(lambda: Side(client), host, upstream_port)
            except OSError:
                if client.transport is not None:
                    client.transport.close()

        task = loop.create_task(connect())
        connecting.add(task)
        task.add_done_callback(connecting.discard)
        return client

    server = await loop.create_server(accepted, "127.0.0.1", port, backlog=1024)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    uvloop.run(main(int(sys.argv[1]), sys.argv[2], int(sys.argv[3])))
