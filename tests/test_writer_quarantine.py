"""The history never drops an event silently, nor stops for one (docs/protocol.md §5): a stream
entry PostgreSQL refuses is isolated from its batch and quarantined raw, byte for byte, beside
an EVENT_QUARANTINED incident; every other entry is written.

The edges refuse such text now (§1), so the entry is injected with a raw XADD, as an older
gateway, a bug or an operator's hand could still write it."""

from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
import orjson
import pytest

from gateway.app import Services
from persistence.writer import HistoryWriter

pytest_plugins = ("history_fixtures",)

Drain = Callable[[], Awaitable[None]]

# Text PostgreSQL cannot hold: a NUL byte; bytes that are not UTF-8 (the writer reads them as
# lone surrogates, which no text column takes).
UNSTORABLE_USERNAMES = {"nul-byte": b"bad\x00name", "not-utf-8": b"\xff\xfe"}


def quarantined_metric(writer: HistoryWriter) -> float:
    """wallet_writer_events_quarantined{why="refused"}; absent until the first one."""
    sample = writer.metrics.registry.get_sample_value(
        "wallet_writer_events_quarantined_total", {"why": "refused"}
    )
    return sample or 0.0


@pytest.mark.parametrize("username", sorted(UNSTORABLE_USERNAMES))
async def test_an_entry_postgresql_refuses_is_quarantined_raw_and_the_rest_is_written(
    services: Services,
    traffic: Any,
    writer: HistoryWriter,
    drain: Drain,
    database: asyncpg.Connection,
    username: str,
) -> None:
    players = await traffic.players(3, "q", 10_000)
    bet_ids = await traffic.bets(players, 2, "before")
    stream = services.wallet.keys.events(services.wallet.keys.shard(players[0][0]))
    # as Redis will hold it, in order: bytes go to Redis as they are
    raw = [
        b"kind", b"player", b"user", b"unstorable", b"currency", b"USD",
        b"username", UNSTORABLE_USERNAMES[username], b"balance", b"0", b"maxbet", b"",
        b"ts", b"1700000000000",
    ]  # fmt: skip
    entry_id = await services.redis.xadd(stream, dict(zip(raw[::2], raw[1::2], strict=True)))
    bet_ids += await traffic.bets(players, 2, "after")  # the same stream, after the bad entry
    assert quarantined_metric(writer) == 0

    await drain()

    kept = await database.fetch("SELECT * FROM rejected_events")
    assert [(r["stream"], r["stream_id"], r["raw"]) for r in kept] == [(stream, entry_id, raw)]
    assert kept[0]["provider_tx_id"] is None  # a player event has no tx id
    [incident] = await database.fetch("SELECT * FROM incidents")
    assert (incident["kind"], incident["provider_tx_id"]) == (
        "EVENT_QUARANTINED", f"{stream}/{entry_id}",
    )  # fmt: skip
    details = orjson.loads(incident["details"])
    assert (details["stream"], details["stream_id"]) == (stream, entry_id)
    assert quarantined_metric(writer) == 1
    # every other entry, before and after it in its stream and batch, is in the history
    assert sorted(r["user_id"] for r in await database.fetch("SELECT user_id FROM players")) == (
        sorted(user_id for user_id, _ in players)
    )
    assert await database.fetchval("SELECT count(*) FROM sessions") == len(players)
    written = await database.fetch("SELECT provider_tx_id FROM transactions")
    assert sorted(r["provider_tx_id"] for r in written) == sorted(bet_ids)
    # quarantined once: a drain that finds nothing new adds nothing
    await drain()
    assert await database.fetchval("SELECT count(*) FROM rejected_events") == 1
    assert quarantined_metric(writer) == 1
