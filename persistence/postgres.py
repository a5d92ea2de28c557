"""How every part of the project reaches PostgreSQL (gateway, writer, one-off commands): the
connect limit, and the errors that mean "not reachable now, try again" rather than a bug."""

from typing import Any

import asyncpg

# Far above a connect on a LAN: a server that takes longer is as good as down.
PG_CONNECT_SECONDS_MAX = 5.0

PG_UNREACHABLE: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,  # includes ConnectionDoesNotExistError: the server went away
    asyncpg.exceptions.OperatorInterventionError,  # shutting down, starting up
    asyncpg.exceptions.InsufficientResourcesError,  # too many connections
    asyncpg.exceptions.TransactionRollbackError,  # deadlock or serialization: run it again
    # a pooled connection that received the server's FATAL "terminating connection" but is
    # not marked closed yet: in use, it fails so; a fresh connection works
    asyncpg.InternalClientError,
)


async def connect_postgres(database_url: str) -> asyncpg.Connection:
    """One connection, for a one-off command."""
    return await asyncpg.connect(database_url, timeout=PG_CONNECT_SECONDS_MAX)


async def open_postgres_pool(
    database_url: str, connections_max: int, **pool_options: Any
) -> asyncpg.Pool:
    """A pool for a long-running process. min_size 0: it opens without a server, so the
    process starts, and keeps working, while PostgreSQL is down."""
    return await asyncpg.create_pool(
        database_url,
        min_size=0,
        max_size=connections_max,
        timeout=PG_CONNECT_SECONDS_MAX,
        **pool_options,
    )
