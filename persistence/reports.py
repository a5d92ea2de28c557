"""Operator reports over the durable history, for the console (gateway/console) and for
`wallet-gateway report ggr --from --to [--format table|csv]`.

Gross gaming revenue (GGR) = stakes - wins - refunds, per UTC day (of `created_at`, when the
wallet stored the transaction), game and currency, from the transactions that applied
(`outcome = 'OK'`) only, measured by `delta`, the real money each one moved:

- stakes: real-money bets (`BET`), -delta. A refused bet (402, 401, 409 BET_VOIDED, ...) moved
  nothing and is not counted. `FREE_BET` stakes are paid by the provider's gift and never move
  the real balance: they are not stakes; they are shown apart (`free_bet_stakes`), informative.
- wins: `WIN` and `FREE_BET_WIN`, +delta: both credit the player's real balance.
- refunds: `ROLL_BACK`, +delta: the recorded stake given back (0 for a free bet or a rollback
  that overtook its bet). A refund counts on the day of the rollback, not of its bet, as the
  money moved then.

So GGR is exactly minus the sum of the real-money deltas of the game's transactions: what the
players lost to the house. Cashier adjustments are not gaming revenue and are left out.

Also the other reads the console needs beside persistence/support_queries.py: closed rounds
(mismatches first), a player's sessions (never their tokens) and cashier adjustments.
"""

import argparse
import asyncio
import csv
import io
import sys
from dataclasses import astuple, dataclass, fields
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

import asyncpg

from gateway.logs import configure_logging
from gateway.settings import add_setting_flags, load_settings
from persistence.batch import datetime_to_ms
from persistence.postgres import connect_postgres

REPORT_DAYS_MAX = 366  # one request, one year at most: the console must stay responsive
ROUNDS_PAGE_MAX = 200
PLAYER_ROWS_MAX = 50

# $1 <= created_at < $2. The filters sum the real money that moved (see the docstring).
GGR = """
SELECT (created_at AT TIME ZONE 'UTC')::date AS day, game, currency,
       count(*) FILTER (WHERE action = 'BET') AS bets,
       coalesce(sum(-delta) FILTER (WHERE action = 'BET'), 0)::bigint AS stakes,
       coalesce(sum(delta) FILTER (WHERE action IN ('WIN', 'FREE_BET_WIN')), 0)::bigint AS wins,
       coalesce(sum(delta) FILTER (WHERE action = 'ROLL_BACK'), 0)::bigint AS refunds,
       coalesce(sum(amount) FILTER (WHERE action = 'FREE_BET'), 0)::bigint AS free_bet_stakes
FROM transactions
WHERE outcome = 'OK' AND action <> 'CLOSE_ROUND' AND created_at >= $1 AND created_at < $2
GROUP BY 1, 2, 3
ORDER BY 1, 2, 3
"""

# What needs a look first: mismatches, then rounds not compared yet, newest first.
CLOSED_ROUNDS = """
SELECT round_id, game, status, provider_bets_count, provider_staked, provider_paid,
       ledger_bets_count, ledger_staked, ledger_paid, differences, closed_at
FROM rounds
WHERE ($1::text IS NULL OR status = $1)
ORDER BY CASE status WHEN 'mismatch' THEN 0 WHEN 'pending' THEN 1 ELSE 2 END, closed_at DESC
LIMIT $2
"""

PLAYER_SESSIONS = """
SELECT source, opened_at FROM sessions WHERE user_id = $1 ORDER BY opened_at DESC LIMIT $2
"""

PLAYER_ADJUSTMENTS = """
SELECT reference, amount, balance_after, created_at, reason FROM adjustments
WHERE user_id = $1 ORDER BY created_at DESC, id DESC LIMIT $2
"""


@dataclass(frozen=True, slots=True)
class GgrRow:
    day: date
    game: str
    currency: str
    bets: int
    stakes: int  # millis, as every amount here
    wins: int
    refunds: int
    free_bet_stakes: int  # informative: not part of the GGR

    @property
    def ggr(self) -> int:
        return self.stakes - self.wins - self.refunds


@dataclass(frozen=True, slots=True)
class GgrTotal:
    """One currency's sum over the report (amounts of different currencies never add up)."""

    currency: str
    bets: int
    stakes: int
    wins: int
    refunds: int
    free_bet_stakes: int

    @property
    def ggr(self) -> int:
        return self.stakes - self.wins - self.refunds


@dataclass(frozen=True, slots=True)
class GgrReport:
    first_day: date
    last_day: date  # inclusive
    rows: list[GgrRow]

    def totals(self) -> list[GgrTotal]:
        by_currency: dict[str, list[int]] = {}
        for row in self.rows:
            sums = by_currency.setdefault(row.currency, [0] * 5)
            for index, value in enumerate(
                (row.bets, row.stakes, row.wins, row.refunds, row.free_bet_stakes)
            ):
                sums[index] += value
        return [GgrTotal(currency, *sums) for currency, sums in sorted(by_currency.items())]

    def daily_ggr(self, currency: str) -> list[tuple[date, int]]:
        """Every day of the report with that currency's GGR (0 on a day without play)."""
        per_day: dict[date, int] = {}
        for row in self.rows:
            if row.currency == currency:
                per_day[row.day] = per_day.get(row.day, 0) + row.ggr
        days = (self.last_day - self.first_day).days + 1
        return [
            (day, per_day.get(day, 0))
            for day in (self.first_day + timedelta(days=n) for n in range(days))
        ]

    def csv_text(self) -> str:
        """Amounts in millis, as the history holds them: exact, for a spreadsheet to divide."""
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        names = [field.name for field in fields(GgrRow)]
        writer.writerow([*names, "ggr"])
        for row in self.rows:
            writer.writerow([*astuple(row), row.ggr])
        return out.getvalue()

    def render(self) -> str:
        """The CLI's table: amounts in currency units, three decimals."""
        header = ("day", "game", "currency", "bets", "stakes", "wins", "refunds", "ggr", "free")
        lines = [
            (str(r.day), r.game, r.currency, str(r.bets), *map(units, _amounts(r)))
            for r in self.rows
        ]
        lines += [
            ("total", "", t.currency, str(t.bets), *map(units, _amounts(t))) for t in self.totals()
        ]
        widths = [max(len(cells[i]) for cells in [header, *lines]) for i in range(len(header))]
        text = [
            "  ".join(
                c.ljust(w) if i < 3 else c.rjust(w)
                for i, (c, w) in enumerate(zip(cells, widths, strict=True))
            )
            for cells in [header, *lines]
        ]
        title = f"GGR {self.first_day} .. {self.last_day} (UTC days; free = free-bet stakes)"
        return "\n".join([title, *text] if self.rows else [title, "no applied transactions"])


def _amounts(row: GgrRow | GgrTotal) -> tuple[int, ...]:
    return row.stakes, row.wins, row.refunds, row.ggr, row.free_bet_stakes


def units(millis: int) -> str:
    """Millis as currency units with three decimals, exact (no float)."""
    sign = "-" if millis < 0 else ""
    whole, part = divmod(abs(millis), 1000)
    return f"{sign}{whole}.{part:03d}"


def day_range(first_day: date, last_day: date) -> tuple[datetime, datetime]:
    """[start, end) in UTC of the days first_day..last_day inclusive."""
    if last_day < first_day:
        raise ValueError("--to must not be before --from")
    if (last_day - first_day).days >= REPORT_DAYS_MAX:
        raise ValueError(f"a report covers at most {REPORT_DAYS_MAX} days")
    start = datetime.combine(first_day, time(), UTC)
    return start, datetime.combine(last_day + timedelta(days=1), time(), UTC)


async def ggr_report(
    connection: asyncpg.Connection | asyncpg.Pool, first_day: date, last_day: date
) -> GgrReport:
    rows = await connection.fetch(GGR, *day_range(first_day, last_day))
    return GgrReport(first_day, last_day, [GgrRow(*row.values()) for row in rows])


async def closed_rounds(
    pool: asyncpg.Pool, status: str | None, limit: int = ROUNDS_PAGE_MAX
) -> list[dict[str, Any]]:
    rows = await pool.fetch(CLOSED_ROUNDS, status, limit)
    return [{**dict(row), "closed_at": datetime_to_ms(row["closed_at"])} for row in rows]


async def player_sessions(pool: asyncpg.Pool, user_id: str) -> list[dict[str, Any]]:
    rows = await pool.fetch(PLAYER_SESSIONS, user_id, PLAYER_ROWS_MAX)
    return [
        {"source": row["source"], "opened_at": datetime_to_ms(row["opened_at"])} for row in rows
    ]


async def player_adjustments(pool: asyncpg.Pool, user_id: str) -> list[dict[str, Any]]:
    rows = await pool.fetch(PLAYER_ADJUSTMENTS, user_id, PLAYER_ROWS_MAX)
    return [{**dict(row), "created_at": datetime_to_ms(row["created_at"])} for row in rows]


# --- `wallet-gateway report` ---------------------------------------------------------------


def _day(text: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a date (YYYY-MM-DD): {text!r}") from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """`wallet-gateway report ggr --from --to [--format table|csv]`."""
    reports = parser.add_subparsers(dest="report", required=True)
    ggr = reports.add_parser(
        "ggr",
        help="gross gaming revenue (stakes - wins - refunds) per day, game and currency",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ggr.add_argument("--from", dest="first_day", type=_day, required=True, metavar="YYYY-MM-DD")
    ggr.add_argument(
        "--to", dest="last_day", type=_day, required=True, metavar="YYYY-MM-DD",
        help="the last day, included",
    )  # fmt: skip
    ggr.add_argument("--format", choices=("table", "csv"), default="table")
    add_setting_flags(ggr, ("database_url", "log_level", "data_dir"))


async def _read_report(database_url: str, first_day: date, last_day: date) -> GgrReport:
    connection = await connect_postgres(database_url)
    try:
        return await ggr_report(connection, first_day, last_day)
    finally:
        await connection.close()


def run(args: argparse.Namespace) -> int:
    settings = load_settings(args)
    if not settings.database_url:
        raise ValueError("report needs DATABASE_URL (or a running `wallet-gateway up`)")
    configure_logging(settings.log_level)
    day_range(args.first_day, args.last_day)  # refuse before connecting
    report = asyncio.run(_read_report(settings.database_url, args.first_day, args.last_day))
    sys.stdout.write(report.csv_text() if args.format == "csv" else report.render() + "\n")
    return 0
