"""Where the history consumer group stands on each shard stream: what is pending, what is not
delivered yet, how far behind it is, and below which id a stream may be trimmed.

Redis 6.2 (the embedded server) has no per-group `lag` in XINFO, so positions are derived from
XINFO GROUPS, XPENDING and one XRANGE per stream, in two pipelined round trips. Every command
names one stream, so on a Redis Cluster the (non-transactional) pipelines work unchanged:
redis-py sends each node the commands of its slots, one round trip per node, all at once.
"""

from dataclasses import dataclass
from typing import Any

from redis.exceptions import ResponseError

from gateway import clock
from gateway.keys import KeySpace
from gateway.redis_connection import AnyRedis
from gateway.redis_errors import is_not_now

GROUP = "history"
STREAM_START_ID = "0-0"


def parse_stream_id(stream_id: str) -> tuple[int, int]:
    milliseconds, _, sequence = stream_id.partition("-")
    return int(milliseconds), int(sequence or 0)


def stream_id_ms(stream_id: str) -> int:
    return parse_stream_id(stream_id)[0]


def next_stream_id(stream_id: str) -> str:
    """The smallest id after `stream_id` (XTRIM MINID keeps ids >= its argument)."""
    milliseconds, sequence = parse_stream_id(stream_id)
    return f"{milliseconds}-{sequence + 1}"


def earliest(*stream_ids: str | None) -> str | None:
    present = [stream_id for stream_id in stream_ids if stream_id is not None]
    return min(present, key=parse_stream_id) if present else None


def is_after(stream_id: str, other: str) -> bool:
    return parse_stream_id(stream_id) > parse_stream_id(other)


async def ensure_groups(redis: AnyRedis, streams: list[str], group: str = GROUP) -> None:
    """Create the group on every stream (and the stream itself) where missing.

    From id 0, not `$`: entries written before the group existed (the gateway ran before any
    writer, or Redis was flushed) must be written too; inserts are idempotent.
    """
    for stream in streams:
        try:
            await redis.xgroup_create(stream, group, id=STREAM_START_ID, mkstream=True)
        except ResponseError as exc:
            if not str(exc).startswith("BUSYGROUP"):
                raise


def is_missing_group(exc: ResponseError) -> bool:
    return str(exc).startswith("NOGROUP")


def raise_failed_node(replies: list[Any]) -> None:
    """Of a pipeline's replies (raise_on_error=False, for the error replies of a stream or
    group that does not exist yet), raise what says nothing about the stream: on a Redis
    Cluster a node that did not answer, or answered "not now", is one reply among the others
    (one Redis raises it from the pipeline)."""
    for reply in replies:
        if isinstance(reply, Exception) and (
            not isinstance(reply, ResponseError) or is_not_now(reply)
        ):
            raise reply


@dataclass(frozen=True, slots=True)
class StreamProgress:
    stream: str
    length: int
    last_generated_id: str
    group_exists: bool
    pending_events: int
    oldest_pending_id: str | None
    first_undelivered_id: str | None
    # XTRIM MINID argument: below it every group has acknowledged everything; None = keep all
    trim_below_id: str | None

    @property
    def oldest_unacknowledged_id(self) -> str | None:
        return earliest(self.oldest_pending_id, self.first_undelivered_id)

    def written_through(self, stream_id: str) -> bool:
        """Every entry up to `stream_id` has been committed and acknowledged by the group."""
        oldest = self.oldest_unacknowledged_id
        return oldest is None or is_after(oldest, stream_id)

    def written_before_ms(self, now_ms: int) -> int:
        """Entries with a time part below this are all acknowledged (given Redis time now_ms)."""
        oldest = self.oldest_unacknowledged_id
        return now_ms if oldest is None else stream_id_ms(oldest)


def _group_named(groups: list[dict[str, Any]], group: str) -> dict[str, Any] | None:
    return next((info for info in groups if info["name"] == group), None)


async def read_progress(
    redis: AnyRedis, streams: list[str], group: str = GROUP
) -> list[StreamProgress]:
    async with redis.pipeline(transaction=False) as pipe:
        for stream in streams:
            pipe.xinfo_stream(stream)
            pipe.xinfo_groups(stream)
        first = await pipe.execute(raise_on_error=False)
    raise_failed_node(first)

    # Second round trip: the oldest pending id of every group with pending entries, and the
    # first entry after our group's last delivered id.
    async with redis.pipeline(transaction=False) as pipe:
        plans: list[tuple[str, dict[str, Any] | None, list[dict[str, Any]]]] = []
        for index, stream in enumerate(streams):
            info, groups = first[2 * index], first[2 * index + 1]
            if isinstance(info, ResponseError):  # no such stream: nothing to write
                plans.append((stream, None, []))
                continue
            assert not isinstance(groups, ResponseError), groups
            plans.append((stream, info, groups))
            for group_info in groups:
                if group_info["pending"] > 0:
                    pipe.xpending(stream, group_info["name"])
            ours = _group_named(groups, group)
            start = ours["last-delivered-id"] if ours else STREAM_START_ID
            pipe.xrange(stream, min=f"({start}", max="+", count=1)
        second = iter(await pipe.execute())

    progress: list[StreamProgress] = []
    for stream, info, groups in plans:
        if info is None:
            progress.append(StreamProgress(stream, 0, STREAM_START_ID, False, 0, None, None, None))
            continue
        oldest_pending: dict[str, str] = {}
        for group_info in groups:
            if group_info["pending"] > 0:
                oldest_pending[group_info["name"]] = next(second)["min"]
        undelivered = next(second)
        ours = _group_named(groups, group)
        # Trim only below what every group acknowledged: its oldest pending entry, or the
        # entry after the last it was delivered.
        trim_below = earliest(
            *(
                oldest_pending.get(info_["name"]) or next_stream_id(info_["last-delivered-id"])
                for info_ in groups
            )
        )
        progress.append(
            StreamProgress(
                stream=stream,
                length=info["length"],
                last_generated_id=info["last-generated-id"],
                group_exists=ours is not None,
                pending_events=ours["pending"] if ours else 0,
                oldest_pending_id=oldest_pending.get(group),
                first_undelivered_id=undelivered[0][0] if undelivered else None,
                trim_below_id=trim_below,
            )
        )
    return progress


@dataclass(frozen=True, slots=True)
class WriterLag:
    """How far the durable history is behind the hot wallet."""

    pending_events: int  # delivered to a writer, not acknowledged yet (exact)
    # entries the streams still hold from the oldest unacknowledged one on: an upper bound of
    # what is not yet durable (exact when acknowledgements arrive in order)
    retained_events: int
    seconds_behind: float  # age of the oldest unacknowledged entry; 0 when caught up
    streams_behind: int

    @classmethod
    def of(cls, progress: list[StreamProgress], now_ms: int | None = None) -> "WriterLag":
        now_ms = clock.now_ms() if now_ms is None else now_ms
        oldest = earliest(*(p.oldest_unacknowledged_id for p in progress))
        behind = [p for p in progress if p.oldest_unacknowledged_id is not None]
        return cls(
            pending_events=sum(p.pending_events for p in progress),
            retained_events=sum(p.length for p in behind),
            seconds_behind=max(0.0, (now_ms - stream_id_ms(oldest)) / 1000) if oldest else 0.0,
            streams_behind=len(behind),
        )

    def render(self) -> str:
        return (
            f"history lag: {self.seconds_behind:.1f} s behind, {self.pending_events} pending, "
            f"<= {self.retained_events} unacknowledged in {self.streams_behind} stream(s)"
        )


async def read_lag(redis: AnyRedis, shards: int, group: str = GROUP) -> WriterLag:
    """The history's lag behind the hot wallet, for a probe (e.g. the gateway's metrics)."""
    return WriterLag.of(await read_progress(redis, KeySpace(shards).all_streams(), group))
