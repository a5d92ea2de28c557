"""What a Redis failure means to the provider: "not now, retry" (503), the same answer whether
the gateway's wallet or the history behind it could not tell."""

import re

from redis.exceptions import (
    ClusterError,
    OutOfMemoryError,
    ReadOnlyError,
    RedisClusterException,
    ResponseError,
    SlotNotCoveredError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

# Cluster trouble redis-py raises itself rather than as an error reply: redirections (MOVED,
# TRYAGAIN, CLUSTERDOWN) that outlast its own retries ("TTL exhausted"), a slot no reachable
# master serves while the slot map is rebuilt after a master died.
REDIS_CLUSTER_IN_FLUX = (ClusterError, SlotNotCoveredError)
# ConnectionError includes BusyLoadingError: Redis replaying its AOF after a restart
REDIS_UNREACHABLE = (RedisConnectionError, RedisTimeoutError, OSError, *REDIS_CLUSTER_IN_FLUX)
# Error replies that say "not now" (a script that gets one has written nothing: Redis refuses
# it before its first write, or it is a read): read-only after a failover, loading, busy with
# a long script, out of memory, refusing writes after a failed save, no replicas, cluster
# trouble (a slot moving or failing over: nothing ran where the reply came from). The provider
# retries them like an unreachable Redis.
REDIS_NOT_NOW_ERRORS = frozenset(
    {"READONLY", "LOADING", "BUSY", "OOM", "MISCONF", "NOREPLICAS", "MASTERDOWN", "TRYAGAIN",
     "CLUSTERDOWN", "MOVED", "ASK"}
)  # fmt: skip
# Redis 6.2 reports a failed redis.call as "... @user_script: 1: -OOM command not allowed ..."
SCRIPT_COMMAND_ERROR = re.compile(r"@user_script: ?\d+: -([A-Z]+) ")


class WalletUnavailable(Exception):
    """Redis, or the history behind it, did not answer: the call may or may not have run; the
    provider retries (503)."""


def is_not_now(error: ResponseError) -> bool:
    """An error reply the provider should retry (503), by its error code: the reply's first
    word, or inside a script's error the code of the command that failed. redis-py strips the
    code of the replies it maps to classes of their own (ClusterDownError, TryAgainError...)
    from the message, keeping it as `status_code`."""
    if isinstance(error, ReadOnlyError | OutOfMemoryError):
        return True
    message = str(error)
    in_script = SCRIPT_COMMAND_ERROR.search(message)
    code = in_script.group(1) if in_script else error.status_code or message.split(" ", 1)[0]
    return code in REDIS_NOT_NOW_ERRORS


# What RedisCluster raises when it cannot (re)build its slot map: no startup node reachable, or
# slots left without a master (a dead master not failed over yet). Not its other
# RedisClusterExceptions (CROSSSLOT in a transaction, a command with no key): those are bugs.
CLUSTER_MAP_UNAVAILABLE = ("Redis Cluster cannot be connected", "All slots are not covered")


def is_cluster_in_flux(error: BaseException) -> bool:
    """Redis Cluster cannot route a command now: wait it out (a failover, a slot moving)."""
    if isinstance(error, REDIS_CLUSTER_IN_FLUX):
        return True
    return isinstance(error, RedisClusterException) and str(error).startswith(
        CLUSTER_MAP_UNAVAILABLE
    )
