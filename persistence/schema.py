"""Schema migrations: the plain SQL files of `persistence/migrations/`, applied in name order,
each once, each in its own transaction, recorded in `schema_migrations`; then the monthly
partitions of `transactions` ahead of time (persistence/partitions.py)."""

from importlib.resources import files

import asyncpg

from persistence.partitions import create_partitions_ahead_if_possible
from persistence.postgres import connect_postgres

# Any constant both migrators agree on: two `migrate` runs at once take turns.
MIGRATION_LOCK_ID = 0x77616C6C6574  # "wallet"


def migration_files() -> list[tuple[str, str]]:
    """(name, SQL) of every migration, in the order they apply."""
    folder = files("persistence") / "migrations"
    names = sorted(entry.name for entry in folder.iterdir() if entry.name.endswith(".sql"))
    return [(name, (folder / name).read_text()) for name in names]


async def migrate(database_url: str) -> list[str]:
    """Apply the migrations not applied yet; return their names (empty when up to date). Then
    make the partitions of this month and the next ones, when missing."""
    connection = await connect_postgres(database_url)
    try:
        await connection.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK_ID)
        try:
            applied_now = await _apply_missing(connection)
            await create_partitions_ahead_if_possible(connection)
            return applied_now
        finally:
            await connection.execute("SELECT pg_advisory_unlock($1)", MIGRATION_LOCK_ID)
    finally:
        await connection.close()


async def _apply_missing(connection: asyncpg.Connection) -> list[str]:
    await connection.execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations ("
        " name text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
    )
    applied = {row["name"] for row in await connection.fetch("SELECT name FROM schema_migrations")}
    applied_now: list[str] = []
    for name, sql in migration_files():
        if name in applied:
            continue
        async with connection.transaction():
            await connection.execute(sql)
            await connection.execute("INSERT INTO schema_migrations (name) VALUES ($1)", name)
        applied_now.append(name)
    return applied_now
