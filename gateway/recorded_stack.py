"""The stack `wallet-gateway up` runs, recorded in its DATA_DIR, so that a command in another
shell (reconcile, restore, simulate, conformance, call, the load test) finds it without an
export, and a restarted `up` gets its embedded servers' ports back."""

import fcntl
import json
import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from urllib.parse import urlsplit

from gateway.instance import LOCK_FILE_NAME
from gateway.settings import Settings
from gateway.signing import KeyRing

STACK_FILE_NAME = "stack.json"


@dataclass(frozen=True, slots=True)
class RecordedStack:
    callbacks_url: str
    admin_url: str
    launch_api_url: str  # where the wallet's launch calls go (PROVIDER_BASE_URL)
    redis_url: str
    database_url: str
    provider_keys: str  # the whole key ring, 'public:secret[,...]'
    admin_token: str

    @property
    def public_key(self) -> str:
        """The key ring's first pair: the one the stack's own tools sign with."""
        return KeyRing.parse(self.provider_keys).public_keys()[0]

    @property
    def secret(self) -> str:
        return KeyRing.parse(self.provider_keys).secret(self.public_key)

    def port_of(self, url_field: str) -> int | None:
        return next(iter(self.ports_of(url_field)), None)

    def ports_of(self, url_field: str) -> list[int]:
        """The URL's ports: one, or one per host of a Redis Cluster's
        `redis+cluster://:password@host:port,host:port,...` (urlsplit reads only one)."""
        hosts = urlsplit(getattr(self, url_field)).netloc.rpartition("@")[2]
        return [
            int(port)
            for host in hosts.split(",")
            if (port := host.rpartition(":")[2]).isdigit() and ":" in host
        ]

    def export_line(self) -> str:
        """What a shell needs for the README's curl calls and for locust, paste-ready."""
        names = {
            "WALLET_URL": self.callbacks_url,
            "ADMIN_URL": self.admin_url,
            "ADMIN_TOKEN": self.admin_token,
            "PUBLIC_KEY": self.public_key,
            "SECRET": self.secret,
            "PROVIDER_KEYS": self.provider_keys,
        }
        return "export " + " ".join(f"{name}='{value}'" for name, value in names.items())

    def save(self, data_dir: str) -> None:
        """Owner-only, written whole then renamed: it holds the stack's secrets."""
        path = stack_file(data_dir)
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(".partial")
        descriptor = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "w") as file:
            json.dump(asdict(self), file, indent=2)
        partial.replace(path)


def stack_file(data_dir: str) -> Path:
    return Path(data_dir).absolute() / STACK_FILE_NAME


def recorded_stack(data_dir: str) -> RecordedStack | None:
    """The stack last recorded in `data_dir`, running or not; None when there is none."""
    try:
        stored = json.loads(stack_file(data_dir).read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise ValueError(f"{stack_file(data_dir)} cannot be read: {exc}") from None
    known = {field.name for field in fields(RecordedStack)}
    if not isinstance(stored, dict) or known - stored.keys():
        raise ValueError(f"{stack_file(data_dir)} is not a stack record; remove it")
    return RecordedStack(**{name: str(stored[name]) for name in known})


def is_running(data_dir: str) -> bool:
    """Whether an `up` holds `data_dir` now: its lock is taken (the kernel drops it with the
    process, so a crashed `up` does not count)."""
    lock_path = Path(data_dir).absolute() / LOCK_FILE_NAME
    try:
        descriptor = os.open(lock_path, os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(descriptor, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(descriptor)  # also releases the shared lock, if it was granted
    return False


def running_stack(data_dir: str) -> RecordedStack | None:
    """The stack an `up` is running from `data_dir` now, or None."""
    stack = recorded_stack(data_dir)
    return stack if stack is not None and is_running(data_dir) else None


def data_dir_of(chosen: str | None) -> str:
    """--data-dir, else DATA_DIR, else the default: where `up` keeps its stack."""
    return chosen or os.environ.get("DATA_DIR") or Settings().data_dir


def nothing_running_from(chosen: str | None) -> str:
    """The end of an error about a missing option a running stack would have given."""
    folder = Path(data_dir_of(chosen)).absolute()
    return f"no `wallet-gateway up` runs from {folder} to give a default"
