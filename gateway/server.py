"""Running the listeners: the callback gateway in N processes sharing one port (SO_REUSEPORT),
the admin API in the first one."""

import asyncio
import logging
import multiprocessing
import signal
from collections.abc import Awaitable, Callable

import uvloop
from aiohttp import web

from gateway.app import Services, create_admin_app, create_gateway_app
from gateway.settings import Settings

SHUTDOWN_GRACE_SECONDS = 10.0
log = logging.getLogger("gateway.server")

# Extra work the main process runs beside the listeners (the history writer under `up`).
Companion = Callable[[Services, asyncio.Event], Awaitable[None]]


async def _start_site(app: web.Application, host: str, port: int) -> web.AppRunner:
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=SHUTDOWN_GRACE_SECONDS)
    await runner.setup()
    await web.TCPSite(runner, host, port, reuse_port=True).start()
    return runner


def _stop_on_signals(stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)


async def serve(
    settings: Settings,
    with_admin: bool,
    started: Callable[[], None] | None = None,
    companions: tuple[Companion, ...] = (),
) -> None:
    """Serve until SIGINT/SIGTERM, then stop accepting, finish in-flight calls, and exit."""
    stop = asyncio.Event()
    _stop_on_signals(stop)
    services = Services.create(settings)
    await services.start()
    runners = [
        await _start_site(
            create_gateway_app(services), settings.gateway_host, settings.gateway_port
        )
    ]
    if with_admin:
        runners.append(
            await _start_site(create_admin_app(services), settings.admin_host, settings.admin_port)
        )
    tasks = [asyncio.create_task(companion(services, stop)) for companion in companions]
    if started:
        started()
    await stop.wait()
    for runner in runners:
        await runner.cleanup()
    await asyncio.gather(*tasks)
    await services.close()


def _worker_main(settings: Settings) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent stops workers with SIGTERM
    uvloop.run(serve(settings, with_admin=False))


def run(
    settings: Settings,
    started: Callable[[], None] | None = None,
    companions: tuple[Companion, ...] = (),
) -> None:
    """The main process serves the gateway and admin API; `workers - 1` more serve the gateway."""
    context = multiprocessing.get_context("spawn")
    workers = [
        context.Process(target=_worker_main, args=(settings,), name=f"gateway-worker-{n}")
        for n in range(1, settings.workers)
    ]
    for worker in workers:
        worker.start()
    try:
        uvloop.run(serve(settings, with_admin=True, started=started, companions=companions))
    finally:
        for worker in workers:
            worker.terminate()
        for worker in workers:
            worker.join(SHUTDOWN_GRACE_SECONDS)
