"""The history writer: drains the shard streams into PostgreSQL through one consumer group.

One pass: XREADGROUP up to BATCH_EVENTS_MAX entries from every shard stream -> decode -> one
PostgreSQL transaction of idempotent inserts -> COMMIT -> XACK. A crash anywhere leaves the
entries pending, never lost; a crash between COMMIT and XACK makes a later writer insert them
again, which the unique keys turn into nothing.

Around that: entries idle in the pending list of a dead writer for CLAIM_IDLE_MS are reclaimed
(XAUTOCLAIM, at start and every CLAIM_INTERVAL_SECONDS); streams are trimmed only below what
every group acknowledged (XTRIM MINID, never MAXLEN); closed rounds are compared once the
streams are written past them (persistence/rounds.py); the lag is logged. PostgreSQL down: the
batch is retried with a bounded backoff while the streams buffer. Redis down or restarted: the
client reconnects; a group lost to a flush is recreated. Several writers may run at once, each
with its own consumer name.

Run one: `python -m persistence.writer` (settings from the environment or flags, as the
gateway's), or `run_history_writer(settings, stop)` inside another asyncio program.
"""

import argparse
import asyncio
import contextlib
import logging
import os
import secrets
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import asyncpg
import uvloop
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import RedisClusterException, ResponseError

from gateway.backoff import Backoff
from gateway.keys import KeySpace
from gateway.logs import configure_logging
from gateway.redis_connection import WRITER_CLIENT_NAME, AnyRedis, connect_background_redis
from gateway.redis_errors import REDIS_UNREACHABLE, is_cluster_in_flux, is_not_now
from gateway.settings import STORE_SETTINGS, Settings, add_setting_flags, load_settings
from persistence.batch import (
    EVENT_QUARANTINED,
    STAGING_DDL,
    Entry,
    HistoryBatch,
    quarantine,
)
from persistence.partitions import create_partitions_ahead_if_possible
from persistence.postgres import PG_UNREACHABLE, open_postgres_pool
from persistence.rounds import ROUND_CLOSE_SKEW_MS, settle_closed_rounds
from persistence.streams import (
    GROUP,
    STREAM_START_ID,
    StreamProgress,
    WriterLag,
    ensure_groups,
    is_missing_group,
    raise_failed_node,
    read_progress,
    stream_id_ms,
)
from persistence.writer_metrics import WriterMetrics, serve_metrics

log = logging.getLogger("persistence.writer")

BATCH_EVENTS_MAX = 2000  # entries per PostgreSQL transaction, summed over all streams
BLOCK_MS = 1000  # how long one XREADGROUP waits for new entries
# On a Redis Cluster a read cannot block on every stream at once: an empty one is polled again
# this often (16 streams: 320 cheap XREADGROUPs a second spread over the nodes, when idle).
CLUSTER_POLL_MS = 50
# After a batch smaller than the limit, wait this long before reading again, so the next batch
# is larger: at 3,000 bets/s, batches of ~25 events cost the writer and PostgreSQL together
# 0.41 of a core, batches of ~300 cost 0.14. The events wait in Redis, durable in its AOF.
LINGER_MS = 100
CLAIM_IDLE_MS = 30_000  # a pending entry idle this long belongs to a dead writer
CLAIM_INTERVAL_SECONDS = 10.0
TRIM_INTERVAL_SECONDS = 5.0
ROUND_CHECK_INTERVAL_SECONDS = 1.0
LAG_LOG_INTERVAL_SECONDS = 30.0
LAG_WARN_SECONDS = 60.0  # behind more than this: the lag is logged as a warning
BACKOFF_SECONDS_FIRST = 0.1
BACKOFF_SECONDS_MAX = 5.0
FAILURES_LOGGED_EVERY = 20  # while an outage lasts, one warning per this many retries
CONSUMER_IDLE_DELETE_MS = 3600 * 1000  # a consumer idle this long, with nothing pending, is gone
PG_CONNECTIONS_MAX = 2
PG_COMMAND_SECONDS_MAX = 60.0
PG_CLOSE_SECONDS_MAX = 5.0
REDIS_REPLY_MARGIN_SECONDS = 5.0  # a blocked XREADGROUP answers within BLOCK_MS plus this
DRAIN_POLL_SECONDS = 0.05
METRICS_HOST_DEFAULT = "127.0.0.1"
DRAIN_CHECK_INTERVAL_SECONDS = 0.5  # while writing, how often a drain checks if it is done
# A drain returns by its deadline; this backstop cancels it should something block past it.
DRAIN_OVERRUN_SECONDS_MAX = 30.0

# What the loops wait out or handle (see _outlast_redis_failure); RedisClusterException is not
# a RedisError: the cluster client raises it when it cannot build its slot map.
REDIS_FAILURES = (ResponseError, RedisClusterException, *REDIS_UNREACHABLE)

# What PostgreSQL refuses in an entry itself (a NUL byte, a number out of range, a broken
# constraint): that entry is quarantined and the writer goes on. Anything else (a missing
# table...) is not the entry's fault: it stops the writer, whose supervisor restarts it.
PG_REFUSED_ENTRY: tuple[type[BaseException], ...] = (
    asyncpg.exceptions.DataError,
    asyncpg.exceptions.IntegrityConstraintViolationError,
)


@dataclass(frozen=True, slots=True)
class WriterLimits:
    batch_events_max: int = BATCH_EVENTS_MAX
    block_ms: int = BLOCK_MS
    linger_ms: int = LINGER_MS
    claim_idle_ms: int = CLAIM_IDLE_MS
    round_close_skew_ms: int = ROUND_CLOSE_SKEW_MS
    # Fault injection for crash tests only: a pause between COMMIT and XACK, the window in
    # which a crash makes the next writer insert the batch a second time.
    ack_delay_seconds: float = 0.0


def default_consumer_name() -> str:
    """Unique per process: a restarted writer is a new consumer; its predecessor's pending
    entries are reclaimed once idle."""
    return f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"


def _retry_backoff() -> Backoff:
    return Backoff(BACKOFF_SECONDS_FIRST, BACKOFF_SECONDS_MAX)


def _worth_logging(backoff: Backoff) -> bool:
    """The first failure of an outage, then one in FAILURES_LOGGED_EVERY."""
    return backoff.failures % FAILURES_LOGGED_EVERY == 1


async def _pause(stop: asyncio.Event | None, seconds: float) -> None:
    """Sleep, but wake up at once when `stop` is set."""
    if stop is None:
        await asyncio.sleep(seconds)
        return
    try:
        await asyncio.wait_for(stop.wait(), timeout=seconds)
    except TimeoutError:
        pass


async def _prepare_connection(connection: asyncpg.Connection) -> None:
    await connection.execute(STAGING_DDL)
    await create_partitions_ahead_if_possible(connection)


def connect_writer_redis(redis_url: str, block_ms: int) -> AnyRedis:
    # Its own client: the gateway's answers within REDIS_TIMEOUT_MS, a blocked read does not.
    return connect_background_redis(
        redis_url,
        socket_timeout=block_ms / 1000 + REDIS_REPLY_MARGIN_SECONDS,
        client_name=WRITER_CLIENT_NAME,
        # bytes that are not UTF-8 survive as lone surrogates: quarantined raw, not a crash
        encoding_errors="surrogateescape",
    )


class HistoryWriter:
    """One consumer of the `history` group on every shard stream."""

    def __init__(
        self,
        settings: Settings,
        consumer: str | None = None,
        limits: WriterLimits = WriterLimits(),
        metrics: WriterMetrics | None = None,
    ) -> None:
        if not settings.database_url:
            raise ValueError("the history writer needs DATABASE_URL")
        assert limits.batch_events_max >= 1 and limits.block_ms >= 1 and limits.linger_ms >= 0
        self.settings = settings
        self.limits = limits
        self.consumer = consumer or default_consumer_name()
        self.streams = KeySpace(settings.shards).all_streams()
        self.redis = connect_writer_redis(settings.redis_url, limits.block_ms)
        self._pool: asyncpg.Pool | None = None
        self._groups_ready = False
        # Entries may be pending at this very consumer: at start (a writer restarted under its
        # name), and after a failed read (what it had delivered is pending here, unseen).
        self._own_pending_unread = True
        self.metrics = metrics or WriterMetrics()
        self.events_written = 0
        self.events_reclaimed = 0
        self.batches_written = 0

    async def __aenter__(self) -> "HistoryWriter":
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        if self._pool is not None:
            try:
                await asyncio.wait_for(self._pool.close(), PG_CLOSE_SECONDS_MAX)
            except TimeoutError:
                self._pool.terminate()
            self._pool = None
        await self.redis.aclose()

    async def _database(self) -> asyncpg.Pool:
        if self._pool is None:
            self._pool = await open_postgres_pool(
                self.settings.database_url,
                PG_CONNECTIONS_MAX,
                init=_prepare_connection,
                command_timeout=PG_COMMAND_SECONDS_MAX,
            )
        return self._pool

    async def _ensure_groups(self) -> None:
        if not self._groups_ready:
            await ensure_groups(self.redis, self.streams)
            self._groups_ready = True

    # --- one batch -----------------------------------------------------------------------

    async def _read_new(self, block_ms: int | None) -> list[Entry]:
        return await self._read_group(">", block_ms)

    async def _read_group(self, start_id: str, block_ms: int | None) -> list[Entry]:
        """XREADGROUP on every stream from `start_id`: ">" what no consumer was given yet,
        "0" what is pending at this consumer (an entry deleted since comes without fields)."""
        # COUNT applies per stream: split the batch limit between the streams.
        per_stream = max(1, self.limits.batch_events_max // len(self.streams))
        if isinstance(self.redis, RedisCluster):
            reply = await self._read_each_stream(start_id, per_stream, block_ms)
        else:  # one Redis: one call for all streams, blocking in the server
            reply = await self.redis.xreadgroup(
                GROUP,
                self.consumer,
                dict.fromkeys(self.streams, start_id),
                count=per_stream,
                block=block_ms,
            )
        entries = [
            (stream, entry_id, fields)
            for stream, stream_entries in reply or []
            for entry_id, fields in stream_entries
        ]
        assert len(entries) <= max(self.limits.batch_events_max, len(self.streams))
        return entries

    async def _read_each_stream(
        self, start_id: str, count: int, block_ms: int | None
    ) -> list[tuple[str, list[tuple[str, dict[str, str]]]]]:
        """XREADGROUP on a Redis Cluster, as one Redis answers it. The shard streams are in
        different slots and one command may not name two (CROSSSLOT): one XREADGROUP per
        stream, in one pipeline, which redis-py sends to each stream's node (one round trip per
        node, all at once; it follows MOVED and re-reads the slot map). Reads of several nodes
        cannot block together, so an empty read is polled again until block_ms has passed."""
        deadline = time.monotonic() + (block_ms or 0) / 1000
        while True:
            async with self.redis.pipeline(transaction=False) as pipe:
                for stream in self.streams:
                    pipe.xreadgroup(GROUP, self.consumer, {stream: start_id}, count=count)
                replies = await pipe.execute(raise_on_error=False)
            # The error as Redis replied it (raise_on_error would prefix it, hiding NOGROUP);
            # what the other streams delivered meanwhile is read again after the failure.
            failed = next((reply for reply in replies if isinstance(reply, Exception)), None)
            if failed is not None:
                raise failed
            reply = [stream_reply for per_stream in replies for stream_reply in per_stream or []]
            if any(entries for _, entries in reply) or time.monotonic() >= deadline:
                return reply
            await asyncio.sleep(CLUSTER_POLL_MS / 1000)

    @contextlib.asynccontextmanager
    async def _connection(self) -> AsyncIterator[asyncpg.Connection]:
        pool = await self._database()
        connection = await pool.acquire()
        try:
            yield connection
        except BaseException:
            # Whatever state a failed connection is in, the pool must not hand it out again.
            connection.terminate()
            raise
        finally:
            await pool.release(connection)

    async def _commit(self, batch: HistoryBatch) -> None:
        try:
            async with self._connection() as connection, connection.transaction():
                await batch.store(connection)
        except PG_UNREACHABLE:
            self.metrics.commit_failures.inc()
            raise

    async def _acknowledge(self, entries: list[Entry]) -> None:
        ids_by_stream: dict[str, list[str]] = {}
        for stream, entry_id, _ in entries:
            ids_by_stream.setdefault(stream, []).append(entry_id)
        async with self.redis.pipeline(transaction=False) as pipe:
            for stream, ids in ids_by_stream.items():
                pipe.xack(stream, GROUP, *ids)
            await pipe.execute()

    async def _retrying(
        self,
        what: str,
        operation: Callable[[], Awaitable[None]],
        transient: tuple[type[BaseException], ...],
        stop: asyncio.Event | None,
    ) -> bool:
        """Run until it succeeds -> True, or until `stop` is set -> False."""
        backoff = _retry_backoff()
        while True:
            try:
                await operation()
                if backoff.failures:
                    log.info("%s succeeded after %d failed attempts", what, backoff.failures)
                return True
            except transient as exc:
                delay = backoff.next_seconds()
                if _worth_logging(backoff):
                    log.warning("cannot %s (%r); retrying every <= %.1f s", what, exc, delay)
                await _pause(stop, delay)
                if stop is not None and stop.is_set():
                    return False

    async def _store(self, entries: list[Entry]) -> list[HistoryBatch]:
        """Commit the entries in one transaction -> the batches committed. Should PostgreSQL
        refuse an entry, the batch is halved until that entry stands alone; it is quarantined
        and every other entry is written."""
        batch = HistoryBatch.decode(entries)
        try:
            await self._commit(batch)
            return [batch]
        except PG_REFUSED_ENTRY as exc:
            if len(entries) == 1:
                await self._quarantine(entries[0], exc)
                return []
            log.warning("PostgreSQL refused an entry of a batch (%r): isolating it", exc)
        middle = len(entries) // 2
        return [*await self._store(entries[:middle]), *await self._store(entries[middle:])]

    async def _quarantine(self, entry: Entry, exc: BaseException) -> None:
        reason = f"{type(exc).__name__}: {exc}".replace("\x00", "\\0")
        async with self._connection() as connection, connection.transaction():
            await quarantine(connection, entry, reason, None)
        log.error("quarantined stream entry %s %s (%s): %s", entry[0], entry[1],
                  EVENT_QUARANTINED, reason)  # fmt: skip
        self.metrics.events_quarantined.labels("refused").inc()

    async def _write(self, entries: list[Entry], stop: asyncio.Event | None) -> bool:
        """Commit, then acknowledge. False when stopped first (the entries stay pending)."""
        started = time.monotonic()
        batches: list[HistoryBatch] = []

        async def store() -> None:
            batches[:] = await self._store(entries)

        if not await self._retrying("write a batch to PostgreSQL", store, PG_UNREACHABLE, stop):
            return False
        if self.limits.ack_delay_seconds:
            await asyncio.sleep(self.limits.ack_delay_seconds)
        if not await self._retrying(
            "acknowledge a batch", lambda: self._acknowledge(entries), REDIS_UNREACHABLE, stop
        ):
            return False  # committed: whoever reclaims the entries inserts nothing twice
        self.events_written += len(entries)
        self.batches_written += 1
        self.metrics.events_written.inc(len(entries))
        for batch in batches:
            self.metrics.events_rejected.inc(len(batch.rejected))
            self.metrics.events_quarantined.labels("conflict").inc(batch.conflicts)
        self.metrics.batches.inc()
        self.metrics.batch_seconds.observe(time.monotonic() - started)
        return True

    # --- housekeeping ----------------------------------------------------------------------

    async def _recover_own_pending(self, stop: asyncio.Event | None) -> None:
        """Write what is pending at this very consumer (a drain that was interrupted, a writer
        restarted under the same name, a read that failed): nobody else is working on it."""
        while True:
            entries = await self._read_group("0", block_ms=None)
            gone = [(stream, entry_id) for stream, entry_id, fields in entries if not fields]
            for stream, entry_id in gone:  # deleted from the stream: nothing left to write
                await self.redis.xack(stream, GROUP, entry_id)
            entries = [entry for entry in entries if entry[2]]
            if not entries and not gone:
                self._own_pending_unread = False
                return
            if entries and not await self._write(entries, stop):
                return

    async def _claim_idle(self, stop: asyncio.Event | None) -> int:
        """Take over, and write, entries left pending by dead writers -> how many."""
        claimed_total = 0
        for stream in self.streams:
            start = STREAM_START_ID
            while True:
                reply = await self.redis.xautoclaim(
                    stream,
                    GROUP,
                    self.consumer,
                    self.limits.claim_idle_ms,
                    start,
                    count=self.limits.batch_events_max,
                )
                next_start, claimed = reply[0], reply[1]
                entries = [(stream, entry_id, fields) for entry_id, fields in claimed if fields]
                gone = [entry_id for entry_id, fields in claimed if entry_id and not fields]
                if gone:  # deleted from the stream: nothing left to write
                    log.warning("%d pending entries of %s no longer exist", len(gone), stream)
                    await self.redis.xack(stream, GROUP, *gone)
                if entries:
                    if not await self._write(entries, stop):
                        return claimed_total
                    claimed_total += len(entries)
                if next_start == STREAM_START_ID:
                    break
                start = next_start
        if claimed_total:
            log.warning("reclaimed %d entries left pending by stopped writers", claimed_total)
            self.events_reclaimed += claimed_total
            self.metrics.events_reclaimed.inc(claimed_total)
        return claimed_total

    async def _forget_dead_consumers(self) -> None:
        """Drop consumers long idle with nothing pending, so the group does not grow for ever.

        Never one with pending entries: its pending list is what XAUTOCLAIM recovers.
        """
        for stream, consumer in await self._group_consumers():
            if (
                consumer["name"] != self.consumer
                and consumer["pending"] == 0
                and consumer["idle"] > CONSUMER_IDLE_DELETE_MS
            ):
                await self.redis.xgroup_delconsumer(stream, GROUP, consumer["name"])

    async def leave_group(self) -> None:
        """Remove this consumer where it holds nothing pending (a one-off drain's consumer)."""
        for stream, consumer in await self._group_consumers():
            if consumer["name"] == self.consumer and consumer["pending"] == 0:
                await self.redis.xgroup_delconsumer(stream, GROUP, self.consumer)

    async def _group_consumers(self) -> list[tuple[str, dict[str, Any]]]:
        """(stream, consumer info) of the group on every stream that has it."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for stream in self.streams:
                pipe.xinfo_consumers(stream, GROUP)
            per_stream = await pipe.execute(raise_on_error=False)
        raise_failed_node(per_stream)
        return [
            (stream, consumer)
            for stream, consumers in zip(self.streams, per_stream, strict=True)
            if not isinstance(consumers, ResponseError)
            for consumer in consumers
        ]

    async def _trim_acknowledged(self, progress: list[StreamProgress]) -> None:
        """XTRIM MINID below what every group acknowledged; unacknowledged entries stay."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for stream_progress in progress:
                if stream_progress.trim_below_id and stream_progress.length:
                    pipe.xtrim(
                        stream_progress.stream,
                        minid=stream_progress.trim_below_id,
                        approximate=False,
                    )
            await pipe.execute()

    async def progress(self) -> list[StreamProgress]:
        return await read_progress(self.redis, self.streams)

    async def lag(self) -> WriterLag:
        """Pending and unacknowledged entries, and how many seconds the history is behind."""
        lag = WriterLag.of(await self.progress())
        self.metrics.observe_lag(lag)
        return lag

    async def _written_before_ms(self) -> int:
        """Stream time below which every stream is committed and acknowledged."""
        seconds, microseconds = await self.redis.time()  # before the progress: see streams.py
        now_ms = seconds * 1000 + microseconds // 1000
        return min(p.written_before_ms(now_ms) for p in await self.progress())

    async def settle_rounds(self) -> list[tuple[str, str]]:
        """Compare the closed rounds the streams are written past -> [(round_id, result)]."""
        async with self._connection() as connection:
            pending = await connection.fetchval(
                "SELECT min(close_stream_ms) FROM rounds WHERE status = 'pending'"
            )
            if pending is None:
                return []
            written_before_ms = await self._written_before_ms()
            if pending + self.limits.round_close_skew_ms >= written_before_ms:
                return []
            settled = await settle_closed_rounds(
                connection, written_before_ms, self.limits.round_close_skew_ms
            )
        for round_id, result in settled:
            log.log(
                logging.WARNING if result != "match" else logging.DEBUG,
                "round %s compared with the provider's aggregate: %s",
                round_id,
                result,
            )
        return settled

    async def _rounds_pending_through(self, stream_ms: int) -> bool:
        async with self._connection() as connection:
            return await connection.fetchval(
                "SELECT EXISTS (SELECT 1 FROM rounds"
                " WHERE status = 'pending' AND close_stream_ms <= $1)",
                stream_ms,
            )

    # --- the loops -------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Write until `stop` is set. Redis or PostgreSQL outages are waited out, not raised."""
        backoff = _retry_backoff()
        next_claim_at = next_trim_at = next_rounds_at = next_lag_at = 0.0
        log.info("history writer %s started on %d streams", self.consumer, len(self.streams))
        while not stop.is_set():
            try:
                await self._ensure_groups()
                if self._own_pending_unread:
                    await self._recover_own_pending(stop)
                if time.monotonic() >= next_claim_at:
                    await self._claim_idle(stop)
                    await self._forget_dead_consumers()
                    next_claim_at = time.monotonic() + CLAIM_INTERVAL_SECONDS
                entries = await self._read_new(self.limits.block_ms)
                if entries and not await self._write(entries, stop):
                    break
                if entries and len(entries) < self.limits.batch_events_max:
                    await _pause(stop, self.limits.linger_ms / 1000)
                now = time.monotonic()
                if now >= next_trim_at:
                    progress = await self.progress()
                    await self._trim_acknowledged(progress)
                    lag = WriterLag.of(progress)
                    self.metrics.observe_lag(lag)
                    next_trim_at = now + TRIM_INTERVAL_SECONDS
                    if now >= next_lag_at:
                        self._log_lag(lag)
                        next_lag_at = now + LAG_LOG_INTERVAL_SECONDS
                if now >= next_rounds_at:
                    await self._settle_rounds_if_reachable()
                    next_rounds_at = now + ROUND_CHECK_INTERVAL_SECONDS
                backoff.reset()
            except REDIS_FAILURES as exc:
                await self._outlast_redis_failure(exc, backoff, stop)
        log.info(
            "history writer %s stopped: %d events in %d batches, %d reclaimed",
            self.consumer,
            self.events_written,
            self.batches_written,
            self.events_reclaimed,
        )

    async def _outlast_redis_failure(
        self, exc: BaseException, backoff: Backoff, stop: asyncio.Event
    ) -> None:
        """A group lost to a flush is created again on the next pass; an unreachable Redis, or
        one that cannot take writes now (READONLY after a failover, LOADING, OOM: XREADGROUP
        writes; on a cluster CLUSTERDOWN, TRYAGAIN, redirections that outlast the client's
        retries, a dead master not failed over yet), is waited out with backoff. Any other
        error is not ours to swallow."""
        # What a failed read had delivered (on a cluster, other streams') is pending here.
        self._own_pending_unread = True
        if isinstance(exc, ResponseError) and not is_not_now(exc):
            if not is_missing_group(exc):
                raise exc
            log.warning("consumer group missing (Redis flushed?): creating it again")
            self._groups_ready = False
            return
        if isinstance(exc, RedisClusterException) and not is_cluster_in_flux(exc):
            raise exc
        if isinstance(self.redis, RedisCluster):
            # Re-read the slot map before the next command: redis-py does after a failed
            # command, not after a failed reply within a pipeline (a master that moved or died).
            with contextlib.suppress(*REDIS_UNREACHABLE):
                await self.redis.aclose()
        delay = backoff.next_seconds()
        if _worth_logging(backoff):
            log.warning("Redis unavailable (%r); retrying every <= %.1f s", exc, delay)
        await _pause(stop, delay)

    async def _settle_rounds_if_reachable(self) -> None:
        try:
            await self.settle_rounds()
        except PG_UNREACHABLE as exc:
            log.debug("rounds not compared yet, PostgreSQL unreachable: %r", exc)

    def _log_lag(self, lag: WriterLag) -> None:
        level = logging.WARNING if lag.seconds_behind > LAG_WARN_SECONDS else logging.INFO
        log.log(level, "%s (%s)", lag.render(), self.consumer)

    async def drain_until_caught_up(self, timeout_s: float) -> bool:
        """Write every entry the streams hold when called, and compare the rounds closed
        before it. True once all of it is committed and acknowledged; False after timeout_s.

        Entries pending at another consumer are waited for, or reclaimed once idle
        `claim_idle_ms` (a dead writer's).
        """
        # The deadline is an event the loop checks, not only a cancellation: on Python 3.11,
        # asyncio.wait_for (which redis-py wraps around every socket write) can swallow a
        # cancellation that arrives as the write completes.
        stop = asyncio.Event()
        expiry = asyncio.get_running_loop().call_later(timeout_s, stop.set)
        try:
            async with asyncio.timeout(timeout_s + DRAIN_OVERRUN_SECONDS_MAX) as backstop:
                return await self._drain(stop)
        except TimeoutError:
            if backstop.expired():
                return False
            raise
        finally:
            expiry.cancel()

    async def _drain(self, stop: asyncio.Event) -> bool:
        backoff = _retry_backoff()
        targets: dict[str, str] | None = None
        next_check_at = 0.0
        self._own_pending_unread = True  # an earlier drain may have stopped half-way
        while not stop.is_set():
            try:
                await self._ensure_groups()
                if targets is None:
                    targets = {p.stream: p.last_generated_id for p in await self.progress()}
                if self._own_pending_unread:
                    await self._recover_own_pending(stop)
                    continue
                entries = await self._read_new(block_ms=None)
                if entries:
                    await self._write(entries, stop)
                    # under steady traffic reads never come back empty: check now and then
                    if time.monotonic() < next_check_at:
                        continue
                next_check_at = time.monotonic() + DRAIN_CHECK_INTERVAL_SECONDS
                progress = await self.progress()
                if all(p.written_through(targets[p.stream]) for p in progress):
                    await self._trim_acknowledged(progress)
                    return await self._settle_rounds_through(
                        max(stream_id_ms(target) for target in targets.values()), stop
                    )
                if not await self._claim_idle(stop) and not entries:
                    await _pause(stop, DRAIN_POLL_SECONDS)
                backoff.reset()
            except REDIS_FAILURES as exc:
                await self._outlast_redis_failure(exc, backoff, stop)
        return False

    async def _settle_rounds_through(self, stream_ms: int, stop: asyncio.Event) -> bool:
        """Compare every round closed up to `stream_ms` (waits out the clock skew margin)."""
        backoff = _retry_backoff()
        while not stop.is_set():
            try:
                await self.settle_rounds()
                if not await self._rounds_pending_through(stream_ms):
                    return True
                await _pause(stop, DRAIN_POLL_SECONDS)
            except PG_UNREACHABLE:
                await _pause(stop, backoff.next_seconds())
        return False


async def run_history_writer(
    settings: Settings,
    stop: asyncio.Event,
    consumer: str | None = None,
    limits: WriterLimits = WriterLimits(),
    metrics_port: int | None = None,
    metrics_host: str = METRICS_HOST_DEFAULT,
) -> None:
    """A writer until `stop` is set (for `wallet-gateway writer` and `up`); with a
    metrics_port, its Prometheus metrics at http://metrics_host:metrics_port/metrics."""
    async with HistoryWriter(settings, consumer, limits) as writer:
        if metrics_port is None:
            await writer.run(stop)
            return
        await asyncio.gather(
            writer.run(stop), serve_metrics(writer.metrics, metrics_host, metrics_port, stop)
        )


async def _run_until_signalled(
    settings: Settings,
    consumer: str | None,
    limits: WriterLimits,
    metrics_port: int | None,
    metrics_host: str,
) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    await run_history_writer(settings, stop, consumer, limits, metrics_port, metrics_host)


def run_writer_process(settings: Settings) -> None:
    """The writer as a child process of `up`: its own core, stopped by SIGINT/SIGTERM."""
    configure_logging(settings.log_level)
    uvloop.run(_run_until_signalled(settings, None, WriterLimits(), None, METRICS_HOST_DEFAULT))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """`wallet-gateway writer` and `python -m persistence.writer`: the settings flags and the
    writer's own."""
    add_setting_flags(parser, STORE_SETTINGS)
    parser.add_argument("--consumer", help="consumer name (default: host-pid-random)")
    parser.add_argument("--batch-events-max", type=int, default=BATCH_EVENTS_MAX)
    parser.add_argument("--claim-idle-ms", type=int, default=CLAIM_IDLE_MS)
    parser.add_argument(
        "--linger-ms",
        type=int,
        default=LINGER_MS,
        help="after a partial batch, wait this long so the next one is larger",
    )
    parser.add_argument(
        "--ack-delay-ms", type=int, default=0, help="fault injection (tests): pause before XACK"
    )
    parser.add_argument("--metrics-port", type=int, help="serve /metrics on this port")
    parser.add_argument("--metrics-host", default=METRICS_HOST_DEFAULT)


def run(args: argparse.Namespace) -> int:
    """Drain the wallet's event streams into PostgreSQL until SIGINT/SIGTERM."""
    settings = load_settings(args)
    if not settings.redis_url or not settings.database_url:
        raise ValueError("the writer needs REDIS_URL and DATABASE_URL")
    configure_logging(settings.log_level)
    limits = WriterLimits(
        batch_events_max=args.batch_events_max,
        claim_idle_ms=args.claim_idle_ms,
        linger_ms=args.linger_ms,
        ack_delay_seconds=args.ack_delay_ms / 1000,
    )
    uvloop.run(
        _run_until_signalled(settings, args.consumer, limits, args.metrics_port, args.metrics_host)
    )
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m persistence.writer", description=run.__doc__)
    add_arguments(parser)
    sys.exit(run(parser.parse_args()))
