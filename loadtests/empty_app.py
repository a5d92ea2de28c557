"""The ceiling: an aiohttp handler that reads the body and answers a fixed envelope, served the
way the gateway is (uvloop, one process). `python -m loadtests.empty_app PORT`."""

import asyncio
import sys

import uvloop
from aiohttp import web

FIXED_ANSWER = b'{"code":200,"message":"OK","data":null}'


async def read_and_answer(request: web.Request) -> web.Response:
    await request.read()
    return web.Response(body=FIXED_ANSWER, content_type="application/json")


async def serve(port: int) -> None:
    app = web.Application()
    app.router.add_post("/{path:.*}", read_and_answer)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    await asyncio.Event().wait()  # until the bench terminates the process


if __name__ == "__main__":
    uvloop.run(serve(int(sys.argv[1])))
