"""`transactions` partitioned by month (migration 006, persistence/partitions.py), against the
session's real PostgreSQL: rows land in their UTC month's partition, or in the default one; one
provider_tx_id is one row whatever months its entries name (its claim in `transaction_ids`); a
database at 005 migrates with every row and id; making partitions ahead is idempotent; the
bring-back's lookups by id read one partition, through the id's claim, by index."""

import asyncio
import sys
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import orjson
import pytest
from helpers import empty_database

from gateway.embedded import EmbeddedPostgres
from persistence.batch import HISTORY_CONFLICT, STAGING_DDL, Entry, HistoryBatch, datetime_to_ms
from persistence.events import TX_KIND, TxEvent
from persistence.partitions import create_partitions_ahead, partitions
from persistence.records import MARKERS_NAMING_IDS, RECORDS_OF_IDS
from persistence.schema import migrate, migration_files

pytest_plugins = ("history_fixtures",)

REPO_DIR = Path(__file__).resolve().parent.parent
STREAM = "w:{0}:events"
PARTITIONED_MIGRATION = "006_partitioned_transactions.sql"
BLOCKED_SECONDS = 0.3  # a claim that waits for another transaction is still waiting after this

# Months far from the clock's, so that no partition made for "now" meddles.
JAN_2031 = datetime(2031, 1, 15, tzinfo=UTC)
LAST_MS_OF_JAN_2031 = datetime(2031, 1, 31, 23, 59, 59, 999_000, tzinfo=UTC)
FIRST_MS_OF_FEB_2031 = datetime(2031, 2, 1, tzinfo=UTC)
MAR_2031 = datetime(2031, 3, 10, 12, tzinfo=UTC)
JUN_2050 = datetime(2050, 6, 15, tzinfo=UTC)
JUL_2050 = datetime(2050, 7, 2, tzinfo=UTC)


def tx_entry(
    tx_id: str,
    moment: datetime,
    stream_id: str,
    action: str = "BET",
    ref: str = "",
    user: str = "alice",
) -> Entry:
    """A stream entry of a money call, as lua/money_common.lua writes it."""
    request = orjson.dumps({"provider_tx_id": tx_id, "action": action}).decode()
    fields = TxEvent(
        kind=TX_KIND, tx=tx_id, fp=f"fp-{tx_id}-{stream_id}", outcome="OK", balance="9000",
        op=f"op-{stream_id}", currency="USD", user=user, action=action, amount="1000",
        delta="-1000" if action == "BET" else "0", round=f"round-{tx_id}", game="aviadrone",
        ref=ref, ts=str(datetime_to_ms(moment)), req=request,
    )._asdict()  # fmt: skip
    return STREAM, stream_id, fields


async def store(connection: asyncpg.Connection, *entries: Entry) -> HistoryBatch:
    """One batch, as the writer commits it."""
    batch = HistoryBatch.decode(list(entries))
    async with connection.transaction():
        await connection.execute(STAGING_DDL)
        await batch.store(connection)
    return batch


async def rows_of(connection: asyncpg.Connection, tx_id: str) -> list[tuple[str, datetime, str]]:
    """(partition, created_at, stream_id) of every row of `tx_id`."""
    rows = await connection.fetch(
        "SELECT tableoid::regclass::text AS part, created_at, stream_id FROM transactions"
        " WHERE provider_tx_id = $1",
        tx_id,
    )
    return [(r["part"], r["created_at"], r["stream_id"]) for r in rows]


async def test_rows_land_in_their_utc_months_partition(database: asyncpg.Connection) -> None:
    # bounds are UTC months whatever the session's time zone
    await database.execute("SET TimeZone = 'America/New_York'")
    created = await create_partitions_ahead(database, months_ahead=2, now=JAN_2031)
    assert created == ["transactions_2031_01", "transactions_2031_02", "transactions_2031_03"]

    await store(
        database,
        tx_entry("jan-last-ms", LAST_MS_OF_JAN_2031, "1-0"),
        tx_entry("feb-first-ms", FIRST_MS_OF_FEB_2031, "2-0"),
        tx_entry("mar", MAR_2031, "3-0"),
    )

    assert await rows_of(database, "jan-last-ms") == [
        ("transactions_2031_01", LAST_MS_OF_JAN_2031, "1-0")
    ]
    assert await rows_of(database, "feb-first-ms") == [
        ("transactions_2031_02", FIRST_MS_OF_FEB_2031, "2-0")
    ]
    assert await rows_of(database, "mar") == [("transactions_2031_03", MAR_2031, "3-0")]
    bounds = dict(await partitions(database))
    assert bounds["transactions_2031_02"] == (
        "FOR VALUES FROM ('2031-01-31 19:00:00-05') TO ('2031-02-28 19:00:00-05')"
    )  # = 2031-02-01 00:00 UTC to 2031-03-01 00:00 UTC, shown in the session's zone
    assert bounds["transactions_default"] == "DEFAULT"


async def test_one_provider_tx_id_is_one_row_across_months(database: asyncpg.Connection) -> None:
    await create_partitions_ahead(database, months_ahead=2, now=JAN_2031)
    first = tx_entry("twice", JAN_2031, "100-0")
    await store(database, first)

    # the wallet applied the id again two months later: the writer keeps the first row and
    # quarantines the second entry (HISTORY_CONFLICT), as it did with a unique index
    batch = await store(database, tx_entry("twice", MAR_2031, "900-0"))
    assert batch.conflicts == 1
    assert await rows_of(database, "twice") == [("transactions_2031_01", JAN_2031, "100-0")]
    rejected = await database.fetch("SELECT stream_id, provider_tx_id FROM rejected_events")
    assert [tuple(r) for r in rejected] == [("900-0", "twice")]
    incident = await database.fetchrow("SELECT kind, details FROM incidents")
    assert incident["kind"] == HISTORY_CONFLICT
    assert orjson.loads(incident["details"])["held_stream_id"] == "100-0"

    # a redelivered entry (a crash between COMMIT and XACK) stores nothing and is no conflict
    batch = await store(database, first)
    assert batch.conflicts == 0
    assert await database.fetchval("SELECT count(*) FROM rejected_events") == 1

    # whoever inserts, through the table or straight into another month's partition
    insert = """
    INSERT INTO {table} (provider_tx_id, action, delta, balance_after, round_id, game, outcome,
                         operator_tx_id, fingerprint, request, created_at, stream_id)
    VALUES ('twice', 'BET', 0, 0, 'r', 'g', 'OK', 'op', 'fp', '{{}}', $1, '5-0')
    """
    assert await database.execute(insert.format(table="transactions"), MAR_2031) == "INSERT 0 0"
    assert (
        await database.execute(insert.format(table="transactions_2031_03"), MAR_2031)
        == "INSERT 0 0"
    )
    assert await rows_of(database, "twice") == [("transactions_2031_01", JAN_2031, "100-0")]
    claims = await database.fetch("SELECT * FROM transaction_ids WHERE provider_tx_id = 'twice'")
    assert [tuple(c) for c in claims] == [("twice", JAN_2031)]


async def test_two_writers_storing_one_id_in_two_months_store_one_row(
    database_url: str, database: asyncpg.Connection
) -> None:
    """The second claim waits for the first transaction, as a unique index makes it wait."""
    await create_partitions_ahead(database, months_ahead=2, now=JAN_2031)
    other = await asyncpg.connect(database_url)
    try:
        transaction = database.transaction()
        await transaction.start()
        await database.execute(STAGING_DDL)
        await HistoryBatch.decode([tx_entry("raced", JAN_2031, "1-0")]).store(database)
        second = asyncio.create_task(store(other, tx_entry("raced", MAR_2031, "2-0")))
        await asyncio.sleep(BLOCKED_SECONDS)
        assert not second.done()
        await transaction.commit()
        assert (await second).conflicts == 1
    finally:
        await other.close()
    assert await rows_of(database, "raced") == [("transactions_2031_01", JAN_2031, "1-0")]


@pytest.fixture
async def database_url_at_005(postgres_server: EmbeddedPostgres) -> AsyncIterator[str]:
    """A database of its own, migrated as far as 005 only (as `migrate` applies each file)."""
    async with empty_database(postgres_server) as url:
        connection = await asyncpg.connect(url)
        try:
            await connection.execute(
                "CREATE TABLE schema_migrations ("
                " name text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
            )
            for migration, sql in migration_files():
                if migration >= PARTITIONED_MIGRATION:
                    break
                async with connection.transaction():
                    await connection.execute(sql)
                    await connection.execute(
                        "INSERT INTO schema_migrations (name) VALUES ($1)", migration
                    )
        finally:
            await connection.close()
        yield url


# Rows as 001-005 stored them: 3 months of bets (one refused), a win, a rollback.
OLD_ROWS = """
INSERT INTO transactions (provider_tx_id, user_id, action, amount, delta, balance_after,
                          currency, round_id, game, bet_tx_id, outcome, operator_tx_id,
                          fingerprint, state, tombstone, early_win, request, created_at,
                          stream_id)
SELECT 'old-' || n, 'user-' || n % 7, 'BET', 100 + n, CASE WHEN n % 10 = 0 THEN 0 ELSE -100 - n END,
       10000 - n, 'USD', 'round-' || n / 3, 'aviadrone', NULL,
       CASE WHEN n % 10 = 0 THEN 'INSUFFICIENT_FUNDS' ELSE 'OK' END, 'op-' || n, 'fp-' || n,
       'open', false, false, '{"n": ' || n || '}',
       timestamptz '2029-11-20 00:00:00+00' + n * interval '7 hours', n || '-0'
FROM generate_series(1, 300) AS n;
INSERT INTO transactions (provider_tx_id, user_id, action, amount, delta, balance_after,
                          currency, round_id, game, bet_tx_id, outcome, operator_tx_id,
                          fingerprint, request, created_at, stream_id)
VALUES ('old-win', 'user-1', 'WIN', 500, 500, 10500, 'USD', 'round-0', 'aviadrone', 'old-1',
        'OK', 'op-w', 'fp-w', '{}', '2030-01-20 10:00:00+00', '1000-0'),
       ('old-rollback', 'user-2', 'ROLL_BACK', NULL, 102, 10102, 'USD', 'round-0',
        'aviadrone', 'old-2', 'OK', 'op-r', 'fp-r', '{}', '2030-01-20 11:00:00+00', '1001-0');
-- a replayed insert: skipped, but it used an id of the sequence
INSERT INTO transactions (provider_tx_id, action, delta, balance_after, round_id, game,
                          outcome, operator_tx_id, fingerprint, request, created_at, stream_id)
VALUES ('old-1', 'BET', 0, 0, 'r', 'g', 'OK', 'op', 'fp', '{}', now(), '1002-0')
ON CONFLICT (provider_tx_id) DO NOTHING;
"""

# What makes the two schemas the same: columns, indexes, constraints, triggers, the view.
SCHEMA = """
SELECT 'column ' || table_name || '.' || column_name || ' ' || data_type || ' '
       || is_nullable || ' ' || coalesce(column_default, '') || ' ' || is_identity || ' '
       || coalesce(identity_generation, '')
FROM information_schema.columns
WHERE table_schema = 'public' AND table_name IN ('transactions', 'transaction_ids')
UNION ALL
SELECT 'index ' || indexdef FROM pg_indexes
WHERE tablename IN ('transactions', 'transaction_ids')
UNION ALL
SELECT 'constraint ' || conrelid::regclass || ' ' || pg_get_constraintdef(oid)
FROM pg_constraint WHERE conrelid IN ('transactions'::regclass, 'transaction_ids'::regclass)
UNION ALL
SELECT 'trigger ' || tgname || ' ' || tgrelid::regclass FROM pg_trigger
WHERE tgrelid = 'transactions'::regclass AND NOT tgisinternal
UNION ALL
SELECT 'view ' || pg_get_viewdef('rolled_back_bets'::regclass)
UNION ALL
SELECT 'partitioned by ' || pg_get_partkeydef('transactions'::regclass)
ORDER BY 1
"""


async def test_a_database_at_005_with_rows_migrates_keeping_every_row_and_its_id(
    database_url_at_005: str, database: asyncpg.Connection
) -> None:
    connection = await asyncpg.connect(database_url_at_005)
    try:
        await connection.execute(OLD_ROWS)
        before = [dict(r) for r in await connection.fetch("SELECT * FROM transactions ORDER BY id")]
        next_id = await connection.fetchval("SELECT last_value + 1 FROM transactions_id_seq")
        assert len(before) == 302 and next_id == 304  # 303 ids taken, one by the skipped insert
        rolled_back = await connection.fetch("SELECT * FROM rolled_back_bets")

        assert await migrate(database_url_at_005) == [PARTITIONED_MIGRATION]

        after = [dict(r) for r in await connection.fetch("SELECT * FROM transactions ORDER BY id")]
        assert after == before
        assert await connection.fetch("SELECT * FROM rolled_back_bets") == rolled_back
        # every row in the partition of its month
        misplaced = await connection.fetch(
            "SELECT provider_tx_id FROM transactions WHERE tableoid::regclass::text"
            " <> 'transactions_' || to_char(created_at AT TIME ZONE 'UTC', 'YYYY_MM')"
        )
        assert misplaced == []
        months = {name for name, _ in await partitions(connection)}
        assert {"transactions_2029_11", "transactions_2029_12", "transactions_2030_01"} <= months
        # every id claimed with its row's month
        unclaimed = await connection.fetchval(
            "SELECT count(*) FROM transactions t FULL JOIN transaction_ids i"
            " ON i.provider_tx_id = t.provider_tx_id AND i.created_at = t.created_at"
            " WHERE t.id IS NULL OR i.provider_tx_id IS NULL"
        )
        assert unclaimed == 0
        assert await connection.fetchval("SELECT count(*) FROM transaction_ids") == 302
        # the identity goes on where it was, and an old id is still one row
        await store(connection, tx_entry("new-1", JAN_2031, "2000-0"))
        assert (
            await connection.fetchval("SELECT id FROM transactions WHERE provider_tx_id = 'new-1'")
            == next_id
        )
        assert (await store(connection, tx_entry("old-1", JAN_2031, "2001-0"))).conflicts == 1
        assert len(await rows_of(connection, "old-1")) == 1
        assert await connection.fetchval("SELECT to_regclass('transactions_unpartitioned')") is None
        # the same schema as a database migrated from empty
        assert await connection.fetch(SCHEMA) == await database.fetch(SCHEMA)
    finally:
        await connection.close()


async def test_creating_partitions_ahead_is_idempotent(
    database_url: str, database: asyncpg.Connection
) -> None:
    november_2040 = datetime(2040, 11, 30, 23, 0, tzinfo=UTC)
    made = ["transactions_2040_11", "transactions_2040_12", "transactions_2041_01"]
    assert await create_partitions_ahead(database, months_ahead=2, now=november_2040) == made
    listed = await partitions(database)
    assert await create_partitions_ahead(database, months_ahead=2, now=november_2040) == []
    assert await partitions(database) == listed

    # two at once: each month made once, neither fails
    other = await asyncpg.connect(database_url)
    try:
        both = await asyncio.gather(
            create_partitions_ahead(database, months_ahead=3, now=november_2040),
            create_partitions_ahead(other, months_ahead=3, now=november_2040),
        )
    finally:
        await other.close()
    assert sorted(both[0] + both[1]) == ["transactions_2041_02"]

    # migrate and the command make this month and the next ones, once
    assert await migrate(database_url) == []
    listed = await partitions(database)
    this_month = datetime.now(UTC).strftime("transactions_%Y_%m")
    assert this_month in dict(listed)
    command = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "persistence.partitions", "--database-url", database_url,
        cwd=REPO_DIR, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    output, _ = await command.communicate()
    assert command.returncode == 0, output
    assert output.decode().strip() == "partitions created: none (all there)"
    assert await partitions(database) == listed


async def test_a_row_beyond_the_partitions_lands_in_the_default_one_and_stays_unique(
    database: asyncpg.Connection,
) -> None:
    await store(database, tx_entry("far", JUN_2050, "1-0"), tx_entry("far-2", JUL_2050, "2-0"))
    assert await rows_of(database, "far") == [("transactions_default", JUN_2050, "1-0")]
    id_before = await database.fetchval("SELECT id FROM transactions WHERE provider_tx_id = 'far'")

    # unique in the default partition too, whatever month the second entry names
    assert (await store(database, tx_entry("far", JUL_2050, "3-0"))).conflicts == 1
    assert await rows_of(database, "far") == [("transactions_default", JUN_2050, "1-0")]

    # the month's partition made late takes its rows out of the default one, ids and claims kept
    assert await create_partitions_ahead(database, months_ahead=0, now=JUN_2050) == [
        "transactions_2050_06"
    ]
    assert await rows_of(database, "far") == [("transactions_2050_06", JUN_2050, "1-0")]
    assert await rows_of(database, "far-2") == [("transactions_default", JUL_2050, "2-0")]
    assert (
        await database.fetchval("SELECT id FROM transactions WHERE provider_tx_id = 'far'")
        == id_before
    )
    assert (await store(database, tx_entry("far", JUL_2050, "4-0"))).conflicts == 1
    assert (await store(database, tx_entry("far", JUN_2050, "1-0"))).conflicts == 0  # replayed
    assert len(await rows_of(database, "far")) == 1
    # the moved-into partition has the table's indexes and its claim trigger
    indexes = await database.fetchval(
        "SELECT count(*) FROM pg_indexes WHERE tablename = 'transactions_2050_06'"
    )
    assert indexes == await database.fetchval(
        "SELECT count(*) FROM pg_indexes WHERE tablename = 'transactions'"
    )
    assert (
        await database.fetchval(
            "SELECT count(*) FROM pg_trigger WHERE tgrelid = 'transactions_2050_06'::regclass"
            " AND tgname = 'transactions_claim_id'"
        )
        == 1
    )
    records = await database.fetch(RECORDS_OF_IDS, ["far", "far-2"])
    assert sorted(r["provider_tx_id"] for r in records) == ["far", "far-2"]


def _scans(plan: dict[str, Any]) -> list[dict[str, Any]]:
    """Every node of an EXPLAIN (FORMAT JSON) plan that reads a relation, executed or not."""
    found = [plan] if "Relation Name" in plan else []
    for child in plan.get("Plans", []):
        found += _scans(child)
    return found


async def _executed_scans(
    connection: asyncpg.Connection, query: str, *args: Any
) -> list[dict[str, Any]]:
    explained = await connection.fetchval(f"EXPLAIN (ANALYZE, FORMAT JSON) {query}", *args)
    return [s for s in _scans(orjson.loads(explained)[0]["Plan"]) if s["Actual Loops"] > 0]


async def test_the_bring_back_reads_one_partition_through_the_claims_by_index(
    database: asyncpg.Connection,
) -> None:
    await create_partitions_ahead(database, months_ahead=2, now=JAN_2031)
    await database.execute(
        """
        INSERT INTO transactions (provider_tx_id, user_id, action, amount, delta, balance_after,
                                  currency, round_id, game, bet_tx_id, outcome, operator_tx_id,
                                  fingerprint, request, created_at, stream_id)
        SELECT 'seed-' || n, 'user-' || n % 50, CASE WHEN n % 4 = 0 THEN 'WIN' ELSE 'BET' END,
               100, 0, 0, 'USD', 'round-' || n / 4, 'aviadrone',
               CASE WHEN n % 4 = 0 THEN 'seed-' || n - 1 END, 'OK', 'op', 'fp', '{}',
               timestamptz '2031-01-01 00:00:00+00' + (n * 19 % 115200) * interval '1 minute',
               n || '-0'
        FROM generate_series(1, 6000) AS n
        """
    )
    await database.execute("ANALYZE transactions; ANALYZE transaction_ids")
    wanted = ["seed-101", "seed-102", "seed-103"]  # January 2031

    records = await database.fetch(RECORDS_OF_IDS, wanted)
    assert sorted(r["provider_tx_id"] for r in records) == wanted

    scans = await _executed_scans(database, RECORDS_OF_IDS, wanted)
    # the ids' claims by their primary key, then each row in its month only
    claims = [s for s in scans if s["Relation Name"] == "transaction_ids"]
    assert [(s["Node Type"], s["Index Name"]) for s in claims] == [
        ("Index Scan", "transaction_ids_pkey")
    ]
    rows = [s for s in scans if s["Alias"] == "t" or s["Alias"].startswith("t_")]
    assert {s["Relation Name"] for s in rows} == {"transactions_2031_01"}
    assert all(s["Node Type"].startswith("Index") for s in rows), rows
    # nothing of the history read whole: every partition the subqueries probe, by index
    await database.execute("SET enable_seqscan = off")  # a scan now is for want of an index
    for query in (RECORDS_OF_IDS, MARKERS_NAMING_IDS):
        scans = await _executed_scans(database, query, wanted)
        history = [s for s in scans if s["Relation Name"].startswith("transaction")]
        assert [s["Relation Name"] for s in history if s["Node Type"] == "Seq Scan"] == [], query


async def test_emptying_the_table_forgets_its_claims(database: asyncpg.Connection) -> None:
    """TRUNCATE transactions (the writer bench's reset) starts the history over; archiving a
    month does not, its claims stay."""
    await create_partitions_ahead(database, months_ahead=0, now=JAN_2031)
    await store(database, tx_entry("kept", JAN_2031, "1-0"))
    await database.execute("TRUNCATE transactions_2031_01")  # a month archived
    assert await database.fetchval("SELECT count(*) FROM transaction_ids") == 1
    assert (await store(database, tx_entry("kept", JAN_2031, "2-0"))).conflicts == 1

    await database.execute("TRUNCATE transactions RESTART IDENTITY")
    assert await database.fetchval("SELECT count(*) FROM transaction_ids") == 0
    assert (await store(database, tx_entry("kept", JAN_2031, "3-0"))).conflicts == 0
    assert await rows_of(database, "kept") == [("transactions_2031_01", JAN_2031, "3-0")]
