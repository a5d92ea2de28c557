"""The serving process itself (gateway/server.py `serve`), run in this process."""

import asyncio
import gc
import os
import signal

from gateway.embedded import free_port
from gateway.server import serve
from gateway.settings import Settings

# Python objects at start-up of a serving process: modules, the apps, the clients.
STARTUP_OBJECTS_MIN = 10_000


async def test_serving_keeps_its_start_up_objects_out_of_the_garbage_collector(
    settings: Settings,
) -> None:
    settings = settings.replace(gateway_port=free_port(), admin_port=free_port())
    frozen_at_start: list[int] = []
    gc.unfreeze()
    try:
        serving = asyncio.create_task(
            serve(
                settings,
                with_gateway=True,
                with_admin=True,
                started=lambda: frozen_at_start.append(gc.get_freeze_count()),
            )
        )
        while not frozen_at_start:
            assert not serving.done(), serving.exception()
            await asyncio.sleep(0.01)
        os.kill(os.getpid(), signal.SIGTERM)  # serve() stops on it, as in production
        await asyncio.wait_for(serving, 15)
    finally:
        gc.unfreeze()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)
    assert frozen_at_start[0] >= STARTUP_OBJECTS_MIN
