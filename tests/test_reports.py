"""The GGR report (persistence/reports.py) against real history rows: written by the real
writer from real callbacks on two days, its figures equal a direct SQL sum of the history
computed another way (from the requested amounts and the refunded bets' stakes, not from
`delta`) and the hand-computed ones; free bets and refused calls do not count; rollbacks
reduce it. Also `wallet-gateway report ggr`."""

import asyncio
import csv
import io
from collections.abc import Awaitable, Callable
from datetime import UTC, date, datetime
from typing import Any

import asyncpg
import pytest
from conftest import Admin, ManualClock, Provider
from payloads import bet, rollback, win

from gateway.cli import STACK_CLIENTS, build_parser, main
from gateway.settings import Settings
from persistence.reports import GgrReport, ggr_report, units

pytest_plugins = ("history_fixtures",)

Drain = Callable[[], Awaitable[None]]
DAY_1, DAY_2 = date(2026, 12, 1), date(2026, 12, 2)
DAY_MS = 86_400_000

# Independent of the report's SQL: stakes and wins as the calls asked (`amount`), refunds as
# the stake of the bet each applied rollback names; refused calls (outcome <> 'OK') and free
# bets left out by their own filters.
DIRECT_SUMS = """
SELECT (t.created_at AT TIME ZONE 'UTC')::date AS day, t.game, t.currency,
       coalesce(sum(t.amount) FILTER (WHERE t.action = 'BET'), 0) AS stakes,
       coalesce(sum(t.amount) FILTER (WHERE t.action IN ('WIN', 'FREE_BET_WIN')), 0) AS wins,
       coalesce(sum(b.amount) FILTER (WHERE t.action = 'ROLL_BACK' AND b.action = 'BET'), 0)
           AS refunds
FROM transactions t
LEFT JOIN transactions b ON t.action = 'ROLL_BACK' AND b.provider_tx_id = t.bet_tx_id
                        AND b.outcome = 'OK' AND NOT t.tombstone
WHERE t.outcome = 'OK' AND t.created_at >= $1 AND t.created_at < $2
GROUP BY 1, 2, 3
ORDER BY 1, 2, 3
"""


@pytest.fixture
def settings(settings: Settings, database_url: str) -> Settings:
    return settings.replace(database_url=database_url)


def day_ms(day: date, hour: int) -> int:
    return int(datetime(day.year, day.month, day.day, hour, tzinfo=UTC).timestamp() * 1000)


async def ok(provider: Provider, path: str, payload: dict[str, Any], status: int = 200) -> None:
    answer = await provider.post(path, payload)
    assert answer[0] == status, answer


async def play_two_days(admin: Admin, provider: Provider, clock: ManualClock) -> None:
    """Day 1: USD on two games, a rollback, a free bet and its win, a refused bet, a double
    win (409); EUR one lost bet. Day 2: USD one bet and its win."""
    clock.ms = day_ms(DAY_1, 10)
    await admin.create_player("alice", 100_000)
    await admin.create_player("bob", 50_000, currency="EUR")
    alice, bob = await admin.open_session("alice"), await admin.open_session("bob")
    await ok(provider, "/withdraw", bet("alice", alice, "b1", 1_000))
    await ok(provider, "/deposit", win("alice", "w1", "b1", 2_500))
    await ok(provider, "/deposit", win("alice", "w1-again", "b1", 2_500), 409)  # DOUBLE_WIN
    await ok(provider, "/withdraw", bet("alice", alice, "b2", 3_000))
    await ok(provider, "/deposit", rollback("alice", "rb2", "b2"))
    await ok(provider, "/withdraw", bet("alice", alice, "b3", 500, game="crash"))
    await ok(provider, "/deposit", win("alice", "w3", "b3", 0, game="crash"))
    await ok(provider, "/withdraw", bet("alice", alice, "b8", 800, game="crash"))  # open
    await ok(provider, "/withdraw", bet("alice", alice, "fb1", 700, action="FREE_BET"))
    await ok(provider, "/deposit", win("alice", "fw1", "fb1", 1_400, action="FREE_BET_WIN"))
    await ok(provider, "/withdraw", bet("alice", alice, "fb2", 900, action="FREE_BET"))
    await ok(provider, "/deposit", rollback("alice", "rb-fb2", "fb2"))  # refunds 0: a free bet
    await ok(provider, "/withdraw", bet("alice", alice, "b4", 1_000_000), 402)  # refused
    await ok(provider, "/withdraw", bet("bob", bob, "b5", 2_000, currency="EUR"))
    clock.advance(DAY_MS)
    alice = await admin.open_session("alice")
    await ok(provider, "/withdraw", bet("alice", alice, "b6", 4_000))
    await ok(provider, "/deposit", win("alice", "w6", "b6", 1_000))


@pytest.fixture
async def report(
    admin: Admin, provider: Provider, clock: ManualClock, drain: Drain, database_url: str
) -> GgrReport:
    await play_two_days(admin, provider, clock)
    await drain()
    connection = await asyncpg.connect(database_url)
    try:
        return await ggr_report(connection, DAY_1, DAY_2)
    finally:
        await connection.close()


def figures(report: GgrReport) -> list[tuple[Any, ...]]:
    return [(r.day, r.game, r.currency, r.stakes, r.wins, r.refunds) for r in report.rows]


async def test_ggr_equals_a_direct_sum_over_the_history(
    report: GgrReport, database: asyncpg.Connection
) -> None:
    start, end = datetime(2026, 12, 1, tzinfo=UTC), datetime(2026, 12, 3, tzinfo=UTC)
    direct = [tuple(row.values()) for row in await database.fetch(DIRECT_SUMS, start, end)]
    assert figures(report) == direct


async def test_ggr_per_day_game_and_currency(report: GgrReport) -> None:
    # free bet and its rollback: no stake, no refund; its win is real money; the refused bet
    # and the double win count nothing
    assert figures(report) == [
        (DAY_1, "aviadrone", "EUR", 2_000, 0, 0),
        (DAY_1, "aviadrone", "USD", 1_000 + 3_000, 2_500 + 1_400, 3_000),
        (DAY_1, "crash", "USD", 500 + 800, 0, 0),
        (DAY_2, "aviadrone", "USD", 4_000, 1_000, 0),
    ]
    assert [r.ggr for r in report.rows] == [2_000, -2_900, 1_300, 3_000]
    assert [r.free_bet_stakes for r in report.rows] == [0, 700 + 900, 0, 0]
    assert [r.bets for r in report.rows] == [1, 2, 2, 1]
    assert [(t.currency, t.stakes, t.wins, t.refunds, t.ggr) for t in report.totals()] == [
        ("EUR", 2_000, 0, 0, 2_000),
        ("USD", 9_300, 4_900, 3_000, 1_400),
    ]
    assert report.daily_ggr("USD") == [(DAY_1, -1_600), (DAY_2, 3_000)]


async def test_a_rollback_reduces_the_ggr_on_its_own_day(
    report: GgrReport, admin: Admin, provider: Provider, drain: Drain, database_url: str
) -> None:
    """Day 2: rolling back day 1's open crash bet gives its stake back on day 2."""
    await ok(provider, "/deposit", rollback("alice", "rb8", "b8", game="crash"))
    await drain()
    connection = await asyncpg.connect(database_url)
    try:
        again = await ggr_report(connection, DAY_1, DAY_2)
    finally:
        await connection.close()
    assert figures(again)[:3] == figures(report)[:3]
    assert (DAY_2, "crash", "USD", 0, 0, 800) in figures(again)
    usd = next(t for t in again.totals() if t.currency == "USD")
    assert usd.ggr == 1_400 - 800


async def test_the_cli_prints_the_report_as_a_table_and_as_csv(
    report: GgrReport, database_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    days = ["--from", str(DAY_1), "--to", str(DAY_2), "--database-url", database_url]
    assert await asyncio.to_thread(main, ["report", "ggr", *days, "--format", "csv"]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert [(r["day"], r["game"], r["currency"], int(r["ggr"])) for r in rows] == [
        (str(r.day), r.game, r.currency, r.ggr) for r in report.rows
    ]
    assert await asyncio.to_thread(main, ["report", "ggr", *days]) == 0
    table = capsys.readouterr().out
    [usd] = [line for line in table.splitlines() if line.startswith("total") and "USD" in line]
    assert usd.split()[-2:] == [units(1_400), units(1_600)]  # GGR, free-bet stakes
    assert units(-2_900) in table


def test_the_report_finds_the_running_stack_by_itself() -> None:
    """`wallet-gateway report ggr --from --to` with no flags: the CLI fills DATABASE_URL from
    the stack `up` runs (gateway/cli.py STACK_CLIENTS)."""
    assert "report" in STACK_CLIENTS
    argv = ["report", "ggr", "--from", "2026-12-01", "--to", "2026-12-31"]
    args = build_parser(argv).parse_args(argv)
    assert (args.database_url, args.first_day, args.last_day) == (
        None,
        DAY_1,
        date(2026, 12, 31),
    )
    assert hasattr(args, "data_dir")


def test_a_report_refuses_days_in_the_wrong_order(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["report", "ggr", "--from", "2026-12-02", "--to", "2026-12-01"]
    assert main([*argv, "--database-url", "postgresql://127.0.0.1:1/none"]) == 2
    assert "--to must not be before --from" in capsys.readouterr().err
