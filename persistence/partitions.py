"""The monthly partitions of `transactions` (migration 006): made ahead of time, so rows land in
their month's partition rather than in `transactions_default`.

`migrate` and the history writer (on each new PostgreSQL connection) make this month and the
next MONTHS_AHEAD; so can an operator, from cron or by hand:
`python -m persistence.partitions --database-url ... [--months-ahead N]`, or in psql
`SELECT create_transactions_partitions(now(), now() + interval '3 months')`. Making them is
idempotent: a month that has its partition is left alone. A month made late takes the rows the
default partition held of it.

Making a partition takes an ACCESS EXCLUSIVE lock on `transactions` for a moment, once a month;
behind a long query it would queue the writer's inserts, so it waits at most LOCK_WAIT_MS and
is tried again at the next start (the rows meanwhile land in the default partition, unique as
any other).
"""

import argparse
import asyncio
import logging
import sys
from datetime import UTC, datetime

import asyncpg

from persistence.postgres import connect_postgres

log = logging.getLogger("persistence.partitions")

MONTHS_AHEAD = 3  # besides this month
LOCK_WAIT_MS = 2000
PARENT = "transactions"
DEFAULT_PARTITION = "transactions_default"

CREATE_PARTITIONS = """
SELECT name FROM create_transactions_partitions(
    $1::timestamptz, $1::timestamptz + make_interval(months => $2)) AS name
"""

# (name, bounds) of every partition of `transactions`, in name order (months sort by name; the
# default partition last).
PARTITIONS = """
SELECT c.relname AS name, pg_get_expr(c.relpartbound, c.oid) AS bounds
FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
WHERE i.inhparent = $1::regclass
ORDER BY c.relname = $2, c.relname
"""


async def create_partitions_ahead(
    connection: asyncpg.Connection, months_ahead: int = MONTHS_AHEAD, now: datetime | None = None
) -> list[str]:
    """Make the partitions of this month (of `now`, UTC) and the `months_ahead` after it that
    do not exist; return the names of those made. Raises asyncpg.LockNotAvailableError when
    `transactions` stays locked for LOCK_WAIT_MS."""
    if months_ahead < 0:
        raise ValueError("months_ahead must be 0 or more")
    async with connection.transaction():
        await connection.execute(f"SET LOCAL lock_timeout = {LOCK_WAIT_MS}")
        rows = await connection.fetch(CREATE_PARTITIONS, now or datetime.now(UTC), months_ahead)
    created = [row["name"] for row in rows]
    if created:
        log.info("partitions of %s created: %s", PARENT, ", ".join(created))
    return created


async def create_partitions_ahead_if_possible(connection: asyncpg.Connection) -> None:
    """create_partitions_ahead for a process that must go on without them (the writer): a
    failure is logged, not raised. The rows of a month without its partition land in the
    default partition, and move into the month's partition when it is made."""
    try:
        await create_partitions_ahead(connection)
    except asyncpg.PostgresError as exc:
        log.warning("partitions of %s not created now, tried again later: %r", PARENT, exc)


async def partitions(connection: asyncpg.Connection) -> list[tuple[str, str]]:
    """(name, bounds) of every partition of `transactions`, months first, then the default."""
    rows = await connection.fetch(PARTITIONS, PARENT, DEFAULT_PARTITION)
    return [(row["name"], row["bounds"]) for row in rows]


async def _run(database_url: str, months_ahead: int) -> list[str]:
    connection = await connect_postgres(database_url)
    try:
        return await create_partitions_ahead(connection, months_ahead)
    finally:
        await connection.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m persistence.partitions",
        description="Create the monthly partitions of `transactions` ahead of time.",
    )
    parser.add_argument("--database-url", required=True)
    parser.add_argument("--months-ahead", type=int, default=MONTHS_AHEAD)
    args = parser.parse_args(argv)
    created = asyncio.run(_run(args.database_url, args.months_ahead))
    print(f"partitions created: {', '.join(created) or 'none (all there)'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
