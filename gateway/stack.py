"""What `wallet-gateway up` adds around the service: embedded servers from the wheels, and
credentials generated once and kept in the data folder."""

import json
import os
import secrets
from collections.abc import Callable
from pathlib import Path

from gateway.embedded import EmbeddedPostgres, EmbeddedRedis, EmbeddedRedisCluster
from gateway.recorded_stack import RecordedStack
from gateway.settings import Settings

CREDENTIALS_FILE_NAME = "credentials.json"
# Each credential of the stack and how it is generated: once, the first time a data folder
# lacks it (a folder of an earlier version gains the servers' passwords, keeping the rest).
GENERATED_CREDENTIALS: dict[str, Callable[[], str]] = {
    "provider_keys": lambda: f"pk-{secrets.token_hex(8)}:{secrets.token_urlsafe(32)}",
    "admin_token": lambda: secrets.token_urlsafe(24),
    "redis_password": lambda: secrets.token_urlsafe(24),
    "postgres_password": lambda: secrets.token_urlsafe(24),
}


def stored_credentials(data_dir: str) -> dict[str, str]:
    """The data folder's credentials, any missing one generated and written first."""
    path = Path(data_dir) / CREDENTIALS_FILE_NAME
    stored = json.loads(path.read_text()) if path.exists() else {}
    missing = {name: make() for name, make in GENERATED_CREDENTIALS.items() if name not in stored}
    if missing:
        stored = {**stored, **missing}
        path.parent.mkdir(parents=True, exist_ok=True)
        # owner-only, written whole then renamed: these are the secrets of this stack, and a
        # crash must not leave a file without the passwords its servers' data now needs
        partial = path.with_name(f".{path.name}.partial")
        descriptor = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.fchmod(descriptor, 0o600)
        with os.fdopen(descriptor, "w") as file:
            json.dump(stored, file)
        partial.replace(path)
    return stored


def ensure_credentials(settings: Settings) -> Settings:
    """Fill PROVIDER_KEYS and ADMIN_TOKEN from the data folder, generating them the first time."""
    stored = stored_credentials(settings.data_dir)
    return settings.replace(
        provider_keys=settings.provider_keys or stored["provider_keys"],
        admin_token=settings.admin_token or stored["admin_token"],
    )


class EmbeddedStack:
    """The servers `up` starts when no REDIS_URL / DATABASE_URL is given, on the ports the
    last `up` of this data folder recorded while they are free (a shell that exported the
    URLs, a client configured once, keep working across restarts). With
    REDIS_CLUSTER_MASTERS, a Redis Cluster instead of the one Redis."""

    def __init__(self, settings: Settings, previous: RecordedStack | None = None) -> None:
        data_dir = Path(settings.data_dir).absolute()
        self.redis: EmbeddedRedis | EmbeddedRedisCluster | None = None
        self.postgres = None
        credentials = (
            stored_credentials(settings.data_dir)
            if not (settings.redis_url and settings.database_url)
            else {}
        )
        redis_server_bin = Path(settings.redis_server_bin) if settings.redis_server_bin else None
        if not settings.redis_url and settings.redis_cluster_masters:
            # a folder of its own: a cluster forms only from empty nodes and splits the data
            # by slot, so the one Redis's folder stays as it was for a switch back
            self.redis = EmbeddedRedisCluster(
                data_dir / "redis-cluster",
                masters=settings.redis_cluster_masters,
                replicas_per_master=1,
                password=credentials["redis_password"],
                ports=previous.ports_of("redis_url") if previous else None,
                appendfsync=settings.redis_appendfsync,
                redis_server_bin=redis_server_bin,
            )
        elif not settings.redis_url:
            self.redis = EmbeddedRedis(
                data_dir / "redis",
                appendfsync=settings.redis_appendfsync,
                redis_server_bin=redis_server_bin,
                port=previous.port_of("redis_url") if previous else None,
                password=credentials["redis_password"],
            )
        if not settings.database_url:
            self.postgres = EmbeddedPostgres(
                data_dir / "postgres",
                pg_bin_dir=Path(settings.pg_bin_dir) if settings.pg_bin_dir else None,
                port=previous.port_of("database_url") if previous else None,
                password=credentials["postgres_password"],
            )

    def start(self, settings: Settings) -> Settings:
        """Start what is embedded; the settings then point at it."""
        if self.redis is not None:
            self.redis.start()
            settings = settings.replace(redis_url=self.redis.url)
        if self.postgres is not None:
            self.postgres.start()
            settings = settings.replace(database_url=self.postgres.url)
        return settings

    def stop(self) -> None:
        for server in (self.postgres, self.redis):
            if server is not None:
                server.stop()


def record_of(settings: Settings) -> RecordedStack:
    """The stack these settings (of a started `up`) describe."""
    return RecordedStack(
        callbacks_url=f"http://{settings.gateway_host}:{settings.gateway_port}",
        admin_url=f"http://{settings.admin_host}:{settings.admin_port}",
        launch_api_url=settings.provider_base_url,
        redis_url=settings.redis_url,
        database_url=settings.database_url,
        provider_keys=settings.provider_keys,
        admin_token=settings.admin_token,
    )
