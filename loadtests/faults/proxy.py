"""A TCP proxy between the provider and the gateway that loses answers and cuts requests.

For each chunk the client sends (an HTTP request, or its head or body when the client writes
them apart) the proxy draws a fate:
- pass: forwarded;
- drop the response: forwarded whole, and the gateway's answer to it is thrown away and both
  connections closed: the gateway applied the call, the provider never hears of it;
- cut: only a random prefix is forwarded, then both connections are closed: the gateway gets
  half a request.
The provider sees a closed connection either way, and retries.
"""

import asyncio
import contextlib
import random
from dataclasses import dataclass

from gateway.embedded import LOOPBACK_HOST

CHUNK_BYTES = 65536


@dataclass
class ProxyStats:
    connections: int = 0
    chunks: int = 0
    responses_dropped: int = 0
    requests_cut: int = 0


class FaultyProxy:
    def __init__(
        self, upstream_port: int, *, drop_share: float, cut_share: float, seed: int | None = None
    ) -> None:
        self.upstream_port = upstream_port
        self.drop_share = drop_share
        self.cut_share = cut_share
        self.stats = ProxyStats()
        self._random = random.Random(seed)
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()  # a connection's two pumps

    @property
    def port(self) -> int:
        assert self._server is not None, "the proxy is not started"
        return int(self._server.sockets[0].getsockname()[1])

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK_HOST}:{self.port}"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, LOOPBACK_HOST, 0)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        # ending the pumps ends each connection's task, which closes its sockets
        for task in list(self._tasks):
            task.cancel()
        await asyncio.sleep(0)

    async def _serve(
        self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter
    ) -> None:
        self.stats.connections += 1
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(
                LOOPBACK_HOST, self.upstream_port
            )
        except OSError:
            client_writer.close()
            return
        drop_next_response = asyncio.Event()

        async def requests() -> None:
            while chunk := await client_reader.read(CHUNK_BYTES):
                self.stats.chunks += 1
                draw = self._random.random()
                if draw < self.cut_share:
                    self.stats.requests_cut += 1
                    upstream_writer.write(chunk[: self._random.randrange(len(chunk))])
                    await upstream_writer.drain()
                    return
                if draw < self.cut_share + self.drop_share:
                    drop_next_response.set()
                upstream_writer.write(chunk)
                await upstream_writer.drain()

        async def responses() -> None:
            while chunk := await upstream_reader.read(CHUNK_BYTES):
                if drop_next_response.is_set():
                    self.stats.responses_dropped += 1
                    return
                client_writer.write(chunk)
                await client_writer.drain()

        pumps = [asyncio.create_task(requests()), asyncio.create_task(responses())]
        self._tasks.update(pumps)
        try:
            # either side done (closed, cut or dropped): close both, as a broken network does
            await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for pump in pumps:
                pump.cancel()
            await asyncio.gather(*pumps, return_exceptions=True)
            self._tasks.difference_update(pumps)
            for writer in (client_writer, upstream_writer):
                writer.close()
                with contextlib.suppress(OSError):
                    await writer.wait_closed()
