"""Running the listeners: the callback gateway in N processes sharing one port (SO_REUSEPORT),
the admin API in the first one, which supervises the others."""

import asyncio
import functools
import gc
import logging
import multiprocessing
import os
import shutil
import signal
import tempfile
from collections.abc import Callable

import uvloop
from aiohttp import web

from gateway.app import Services, create_admin_app, create_gateway_app, operations_api
from gateway.metrics import MULTIPROCESS_DIR_ENV, refresh_gauges
from gateway.settings import Settings
from gateway.supervisor import Supervisor
from persistence.writer import run_writer_process

SHUTDOWN_GRACE_SECONDS = 10.0
log = logging.getLogger("gateway.server")


async def _start_site(
    app: web.Application, host: str, port: int, idle_seconds: float, reuse_port: bool = False
) -> web.AppRunner:
    """`reuse_port` only for the workers of one instance: any process of the same user could
    join a port bound with SO_REUSEPORT and take a share of its connections. `idle_seconds`:
    aiohttp's keep-alive timeout, which it also arms when a connection opens, so a socket that
    never completes a request head (idle, or a slowloris) is closed after it too."""
    runner = web.AppRunner(
        app,
        access_log=None,
        shutdown_timeout=SHUTDOWN_GRACE_SECONDS,
        keepalive_timeout=idle_seconds,
    )
    await runner.setup()
    await web.TCPSite(runner, host, port, reuse_port=reuse_port).start()
    return runner


def _stop_on_signals(stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)


async def serve(
    settings: Settings,
    with_gateway: bool,
    with_admin: bool,
    started: Callable[[], None] | None = None,
    supervisor: Supervisor | None = None,
) -> None:
    """Serve until SIGINT/SIGTERM, then stop accepting, finish in-flight calls, and exit.
    With a `supervisor`: restart its dead children meanwhile."""
    stop = asyncio.Event()
    _stop_on_signals(stop)
    services = Services.create(settings)
    await services.start()
    runners = []
    if with_gateway:
        runners.append(
            await _start_site(
                create_gateway_app(services),
                settings.gateway_host,
                settings.gateway_port,
                settings.client_timeout_seconds,
                reuse_port=settings.workers > 1,
            )
        )
    tasks = []
    if supervisor:
        tasks.append(asyncio.create_task(supervisor.watch(stop)))
    if with_admin:
        runners.append(
            await _start_site(
                create_admin_app(services),
                settings.admin_host,
                settings.admin_port,
                settings.client_timeout_seconds,
            )
        )
        probes = operations_api(services).probes()
        tasks.append(asyncio.create_task(refresh_gauges(services.metrics, probes, stop)))
    # Everything allocated so far (modules, app, scripts: ~60k objects) lives as long as the
    # process: keep it out of the collector, whose full passes over it took 28 ms each, a
    # pause every in-flight callback would wait out.
    gc.freeze()
    if started:
        started()
    await stop.wait()
    for runner in runners:
        await runner.cleanup()
    await asyncio.gather(*tasks)
    await services.close()


def _worker_main(settings: Settings) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent stops workers with SIGTERM
    uvloop.run(serve(settings, with_gateway=True, with_admin=False))


def run(
    settings: Settings, started: Callable[[], None] | None = None, with_writer: bool = False
) -> None:
    """One process: the gateway and the admin API. With `workers` > 1: that many processes
    serve the gateway (sharing the port) and this one the admin API, summing their metrics.
    `with_writer`: one more process drains the streams into PostgreSQL (`up`)."""
    context = multiprocessing.get_context("spawn")
    metrics_dir = None
    if settings.workers > 1:
        # set before the workers start, so their prometheus_client writes to files
        metrics_dir = tempfile.mkdtemp(prefix="wallet-gateway-metrics-")
        os.environ[MULTIPROCESS_DIR_ENV] = metrics_dir
    makers = [
        functools.partial(
            context.Process, target=_worker_main, args=(settings,), name=f"gateway-worker-{n}"
        )
        for n in range(settings.workers if metrics_dir else 0)
    ]
    if with_writer:
        makers.append(
            functools.partial(
                context.Process, target=run_writer_process, args=(settings,), name="history-writer"
            )
        )
    supervisor = Supervisor(makers)
    supervisor.start()
    try:
        uvloop.run(
            serve(
                settings,
                with_gateway=metrics_dir is None,
                with_admin=True,
                started=started,
                supervisor=supervisor,
            )
        )
    finally:
        supervisor.stop(SHUTDOWN_GRACE_SECONDS)
        if metrics_dir:
            shutil.rmtree(metrics_dir, ignore_errors=True)
