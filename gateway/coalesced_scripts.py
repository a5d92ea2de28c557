"""Script calls made in the same event-loop tick go to Redis as one pipeline.

Each EVALSHA stays atomic on the server; only the client's per-call overhead (connection
checkout, packing, one socket write and wake-up per call) is shared. Measured on the EVALSHA
path: ~25 us of client CPU per call instead of ~50 us for one call per round trip
(loadtests/redis_clients_bench.py). The batch is written and read on a pooled connection
directly: redis-py's Pipeline object added 6-9 us per call on top.

At most FLUSHES_IN_FLIGHT_MAX batches are out at once; calls made meanwhile wait for the next
one. Under load the batches grow by themselves (4-5 calls each when every tick flushed, more
now), so Redis and the gateway wake up and write less per call: +12% new bets per second,
measured with locust. When idle, a call still goes out in the tick it was made.

Bounded in time and memory: every call fails (503) once `deadline_seconds` passed without its
reply, wherever it is (one timer per call: asyncio.timeout around each call cost the gateway
several times more); a call whose deadline passed before it was sent is never sent; at most
PENDING_CALLS_MAX calls wait for a batch (past it a call fails at once); a batch that timed out
is not sent again (its scripts may have run; the provider's retry finds out). With
`wait_replicas`, each batch ends with a WAIT on the connection that ran it, so every answer of
the batch, replays included, is on that many replicas, or fails (503).

On a Redis Cluster a batch is split by the node that serves each call's slot, and each part goes
to its node on a connection of that node, all at once. A MOVED reply (the slot moved: the
script did not run) updates the slot map and is sent once more to the new owner; a node that
cannot be reached fails its calls (503) and has the slot map read again, so the provider's retry
reaches the replica promoted in its place. Plain commands (a GET, a PEXPIRE of the money path)
ride in the same batches as the scripts.
"""

import asyncio
import math
import time
from collections.abc import Callable, Hashable
from contextvars import ContextVar
from typing import Any

from hiredis import pack_command
from redis.asyncio import Redis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.connection import AbstractConnection
from redis.commands.core import AsyncScript
from redis.crc import key_slot
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import MovedError, NoScriptError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

BATCH_CALLS_MAX = 256
FLUSHES_IN_FLIGHT_MAX = 2  # one batch on the wire while Redis runs the other
# Calls waiting for a batch: a few batches' worth; beyond, Redis is not keeping up (paused,
# slow): answer 503 at once rather than queue without bound.
PENDING_CALLS_MAX = 8 * BATCH_CALLS_MAX


# The loop time by which a script call must have its reply: a callback sets it at its arrival
# plus REDIS_TIMEOUT_MS (callbacks.py), so time spent before the call counts too (under load,
# parsing 100 other requests first). Unset, a call has `deadline_seconds` from when it is made.
CALL_DEADLINE: ContextVar[float | None] = ContextVar("script_call_deadline", default=None)


class CallsNotConfirmed(RedisConnectionError):
    """Not run (too many calls waiting) or not confirmed (no reply in time, replicas behind):
    answered 503."""


# (the command, the key that routes it, its script (None: a plain command), its reply, its
# deadline's timer)
PendingCall = tuple[
    tuple[Any, ...], str, AsyncScript | None, asyncio.Future[Any], asyncio.TimerHandle | None
]


def _expire(reply: asyncio.Future[Any]) -> None:
    if not reply.done():
        reply.set_exception(CallsNotConfirmed("no reply within REDIS_TIMEOUT_MS"))


class CoalescedScriptCalls:
    def __init__(
        self,
        redis: Redis | RedisCluster,
        observe_batch_seconds: Callable[[float], None] | None = None,
        wait_replicas: int = 0,
        wait_timeout_ms: int = 0,
        deadline_seconds: float | None = None,
    ) -> None:
        self._redis = redis
        self._observe_batch_seconds = observe_batch_seconds
        self._wait_replicas = wait_replicas
        self._wait_timeout_ms = wait_timeout_ms
        self._deadline_seconds = deadline_seconds
        self._pending: list[PendingCall] = []
        self._flush_scheduled = False
        self._flushes: set[asyncio.Task[None]] = set()
        self._slot_map_refresh: asyncio.Task[None] | None = None

    def call(
        self, script: AsyncScript, keys: list[str], args: tuple[Any, ...]
    ) -> asyncio.Future[Any]:
        """EVALSHA of `script`; routed by its first key (all of a script's keys share a slot)."""
        command = ("EVALSHA", script.sha, len(keys), *keys, *args)
        return self._enqueue(command, keys[0], script)

    def command(self, *command: Any) -> asyncio.Future[Any]:
        """A plain command of one key, which comes second (`GET key`, `PEXPIRE key ms`)."""
        return self._enqueue(command, command[1], None)

    def _enqueue(
        self, command: tuple[Any, ...], routing_key: str, script: AsyncScript | None
    ) -> asyncio.Future[Any]:
        loop = asyncio.get_running_loop()
        reply: asyncio.Future[Any] = loop.create_future()
        if len(self._pending) >= PENDING_CALLS_MAX:
            # failed at once, as a reply: a money call makes several calls together and awaits
            # them together, so one refused is seen with the others, none left unawaited
            reply.set_exception(
                CallsNotConfirmed(f"{PENDING_CALLS_MAX} calls already wait for Redis")
            )
            return reply
        deadline_at = CALL_DEADLINE.get()
        if deadline_at is None and self._deadline_seconds:
            deadline_at = loop.time() + self._deadline_seconds
        expiry = None if deadline_at is None else loop.call_at(deadline_at, _expire, reply)
        self._pending.append((command, routing_key, script, reply, expiry))
        if len(self._flushes) >= FLUSHES_IN_FLIGHT_MAX:
            return reply  # goes with the next batch, once one in flight is done
        if len(self._pending) >= BATCH_CALLS_MAX:
            self._start_flush()
        elif not self._flush_scheduled:
            self._flush_scheduled = True
            loop.call_soon(self._start_flush)
        return reply

    def _start_flush(self) -> None:
        self._flush_scheduled = False
        if not self._pending or len(self._flushes) >= FLUSHES_IN_FLIGHT_MAX:
            return
        # a caller past its deadline has answered 503 and stopped waiting: never send its call
        self._pending = [call for call in self._pending if not call[3].done()]
        if not self._pending:
            return
        batch, self._pending = self._pending[:BATCH_CALLS_MAX], self._pending[BATCH_CALLS_MAX:]
        task = asyncio.create_task(self._flush(batch))
        self._flushes.add(task)  # keep a reference until done (asyncio holds only weak ones)
        task.add_done_callback(self._flush_done)

    def _flush_done(self, task: asyncio.Task[None]) -> None:
        self._flushes.discard(task)
        self._start_flush()  # what was called meanwhile

    async def _flush(self, batch: list[PendingCall], resend_allowed: bool = True) -> None:
        replies: dict[int, Any] = {}
        try:
            parts = self._parts_by_node(batch)
        except Exception as exc:  # no slot map (the cluster unreachable): every caller sees it
            parts, replies = {}, {id(call): exc for call in batch}
        if len(parts) == 1:  # one Redis (or one node): no task for it, awaited here
            ((node, part),) = parts.items()
            try:
                results: list[Any] = [await self._execute(node, part)]
            except Exception as exc:
                results = [exc]
        else:
            results = await asyncio.gather(
                *(self._execute(node, part) for node, part in parts.items()),
                return_exceptions=True,
            )
        for part, result in zip(parts.values(), results, strict=True):
            # a part whose connection failed: each of its callers still waiting sees it
            part_replies = [result] * len(part) if isinstance(result, BaseException) else result
            replies.update(zip(map(id, part), part_replies, strict=True))
        resend = [call for call in batch if _to_resend(replies[id(call)])]
        if resend and resend_allowed:
            try:
                await self._prepare_resend(resend, [replies[id(call)] for call in resend])
            except Exception as exc:  # every caller still waiting sees it
                replies.update((id(call), exc) for call in resend)
            else:
                await self._flush(resend, resend_allowed=False)
        for call in batch:
            _, _, _, reply, expiry = call
            result = replies[id(call)]
            if reply.done() or (_to_resend(result) and resend_allowed):
                continue
            if expiry is not None:
                expiry.cancel()
            if isinstance(result, Exception):
                reply.set_exception(result)
            else:
                reply.set_result(result)

    def _parts_by_node(self, batch: list[PendingCall]) -> dict[Hashable, list[PendingCall]]:
        """The batch split by the node that serves each call's slot (one Redis: one part)."""
        if not isinstance(self._redis, RedisCluster):
            return {None: batch}
        slot_map = self._redis.nodes_manager
        parts: dict[Hashable, list[PendingCall]] = {}
        for call in batch:
            node = slot_map.get_node_from_slot(key_slot(call[1].encode()))
            parts.setdefault(node, []).append(call)
        return parts

    async def _prepare_resend(self, calls: list[PendingCall], replies: list[Any]) -> None:
        """Before calls are sent once more: Redis lost its script cache (restart, SCRIPT
        FLUSH, a promoted replica): load the scripts; a slot moved: follow it."""
        for (_, _, script, *_), reply in zip(calls, replies, strict=True):
            if isinstance(reply, NoScriptError) and script is not None:
                script.sha = await self._redis.script_load(script.script)
            elif isinstance(reply, MovedError) and isinstance(self._redis, RedisCluster):
                await self._redis.nodes_manager.move_slot(reply)

    def _refresh_slot_map(self) -> None:
        """A node failed: read the slot map again in the background (one read at a time), so
        the calls after it reach whoever serves its slots now (a promoted replica)."""
        if not isinstance(self._redis, RedisCluster):
            return
        if self._slot_map_refresh is None or self._slot_map_refresh.done():
            self._slot_map_refresh = asyncio.create_task(self._redis.nodes_manager.initialize())
            self._slot_map_refresh.add_done_callback(_ignore_result)

    async def _execute(self, node: ClusterNode | None, batch: list[PendingCall]) -> list[Any]:
        """One reply per call, in order; an error reply is returned, not raised. `node`: the
        cluster node serving these calls' slots, None for one Redis."""
        commands: list[tuple[Any, ...]] = [call[0] for call in batch]
        if self._wait_replicas:
            commands.append(("WAIT", self._wait_replicas, self._wait_timeout_ms))
        if node is None:
            pool = self._redis.connection_pool
            connection = await pool.get_connection()
            release: Callable[[Any], Any] = pool.release
        else:
            connection, release = node.acquire_connection(), node.release
        started = time.perf_counter()
        try:
            try:
                replies = await _send_and_read(connection, commands)
            except RedisConnectionError:
                # A pooled connection found dead (Redis restarted): one more try on a fresh
                # one. Safe: a script that did run is found by its idempotency record. Not on
                # a timeout: those scripts may still be running; the provider retries.
                await connection.disconnect()
                replies = await _send_and_read(connection, commands)
        except BaseException as exc:
            await connection.disconnect()  # replies may still be on the way: never reuse it
            if isinstance(exc, RedisConnectionError | RedisTimeoutError):
                self._refresh_slot_map()
            raise
        finally:
            released = release(connection)  # the pool's is a coroutine, a node's is not
            if released is not None:
                await released
            if self._observe_batch_seconds:
                self._observe_batch_seconds(time.perf_counter() - started)
        if self._wait_replicas:
            acknowledged = replies.pop()
            # an error: the node is no master now (a stale slot map); its scripts were MOVED
            if isinstance(acknowledged, Exception) or acknowledged < self._wait_replicas:
                error = CallsNotConfirmed(
                    f"{acknowledged} of {self._wait_replicas} replicas acknowledged in time"
                )
                # an error reply stays what it is (a MOVED call is sent again, with its WAIT)
                return [reply if isinstance(reply, Exception) else error for reply in replies]
        return replies


def _to_resend(reply: Any) -> bool:
    """A reply that says the call did not run, and where it would: a script Redis does not hold
    (NOSCRIPT), a slot served elsewhere now (MOVED; not ASK, a slot half-migrated: 503)."""
    return isinstance(reply, NoScriptError | MovedError)


def _ignore_result(task: asyncio.Task[None]) -> None:
    """A failed slot-map read is retried by the next failure; retrieve it so asyncio does not
    log it as never retrieved."""
    if not task.cancelled():
        task.exception()


async def _send_and_read(
    connection: AbstractConnection, commands: list[tuple[Any, ...]]
) -> list[Any]:
    # packed by hiredis here, not by the connection: a cluster's connections pack in Python, and
    # redis-py's packing checks every argument's type first (ours are str, bytes and int)
    packed = b"".join(map(pack_command, commands))
    await connection.send_packed_command(packed, check_health=False)
    replies: list[Any] = []
    # One timer for the whole batch (the connection's socket_timeout): redis-py's own timer on
    # every reply cost the gateway ~10 us each (measured in-process).
    try:
        async with asyncio.timeout(connection.socket_timeout):
            for _ in commands:
                try:
                    replies.append(await connection.read_response(timeout=math.inf))
                except ResponseError as error:
                    replies.append(error)
    except TimeoutError as exc:
        raise RedisTimeoutError(f"no reply within {connection.socket_timeout} s") from exc
    return replies
