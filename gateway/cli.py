"""`wallet-gateway`: a thin command line over the library."""

import argparse
import asyncio
import importlib
import importlib.metadata
import logging
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import fields
from typing import Protocol, cast

from gateway.instance import check_ports_free, data_dir_locked
from gateway.logs import configure_logging
from gateway.recorded_stack import (
    RecordedStack,
    data_dir_of,
    nothing_running_from,
    recorded_stack,
    running_stack,
    stack_file,
)
from gateway.settings import (
    EMBEDDED_ONLY_SETTINGS,
    STORE_SETTINGS,
    Settings,
    add_setting_flags,
    load_settings,
    setting_names,
)
from gateway.signing import KeyRing

# The composition root (docs/design.md, Package layout): the one module that may import every
# package. It imports what a command runs only when that command runs, so `--help` or one tool
# loads no other.

log = logging.getLogger("gateway.cli")


def _print_banner(settings: Settings, stack: "RecordedStack") -> None:
    key_ring = KeyRing.parse(settings.provider_keys)
    lines = [
        "wallet-gateway is up",
        f"  callbacks  {stack.callbacks_url}  (/auth /withdraw /deposit /balance)",
        f"  admin API  {stack.admin_url}/admin",
        f"  launch API {settings.provider_base_url}  (PROVIDER_BASE_URL: `wallet-gateway simulate`"
        " serves it by default)",
        f"  redis      {settings.redis_url}",
        f"  postgres   {settings.database_url or '(none)'}",
        f"  admin token  {settings.admin_token}",
    ]
    lines += [
        f"  provider key {public}  secret {key_ring.secret(public)}"
        for public in key_ring.public_keys()
    ]
    lines += [
        f"Recorded in {stack_file(settings.data_dir)}: reconcile, restore, simulate, conformance"
        " and call find this stack by themselves. For curl and locust:",
        stack.export_line(),
        "Ctrl-C stops everything.",
    ]
    print("\n".join(lines), flush=True)


def command_up(settings: Settings) -> int:
    from gateway import server
    from gateway.stack import EmbeddedStack, ensure_credentials, record_of
    from persistence.schema import migrate

    with data_dir_locked(settings.data_dir):
        check_ports_free(settings)
        settings = _with_simulated_provider(ensure_credentials(settings))
        stack = EmbeddedStack(settings, recorded_stack(settings.data_dir))
        try:
            settings = stack.start(settings)
            asyncio.run(migrate(settings.database_url))
            record = record_of(settings)
            record.save(settings.data_dir)
            server.run(settings, started=lambda: _print_banner(settings, record), with_writer=True)
        finally:
            stack.stop()
    return 0


def _with_simulated_provider(settings: Settings) -> Settings:
    """`up` is a development stack: unless told otherwise, its launch calls go to the provider
    simulator's launch API, which knows the stack's first key pair."""
    from provider.launch_api import LAUNCH_API_URL_DEFAULT

    return settings.replace(
        provider_base_url=settings.provider_base_url or LAUNCH_API_URL_DEFAULT,
        provider_public_key=settings.provider_public_key
        or KeyRing.parse(settings.provider_keys).public_keys()[0],
    )


def command_serve(settings: Settings) -> int:
    from gateway import server

    if not settings.redis_url:
        raise ValueError("serve needs REDIS_URL (or use `wallet-gateway up`)")
    if not settings.provider_keys or not settings.admin_token:
        raise ValueError("serve needs PROVIDER_KEYS and ADMIN_TOKEN")
    from gateway.dev_secrets import dev_secret_refusal

    if refusal := dev_secret_refusal(settings):
        raise ValueError(refusal)
    check_ports_free(settings)
    server.run(settings, started=lambda: log.info("serving on port %s", settings.gateway_port))
    return 0


def _needs(settings: Settings, *names: str) -> Settings:
    missing = [name.upper() for name in names if not getattr(settings, name)]
    if missing:
        raise ValueError(
            f"needs {' and '.join(missing)}: {nothing_running_from(settings.data_dir)}"
        )
    return settings


def command_migrate(settings: Settings) -> int:
    from persistence.schema import migrate

    applied = asyncio.run(migrate(_needs(settings, "database_url").database_url))
    print(f"migrations applied: {', '.join(applied) or 'none (up to date)'}")
    return 0


def command_reconcile(settings: Settings) -> int:
    """Exit 0 only when Redis and PostgreSQL agree."""
    from gateway.redis_connection import run_with_redis
    from persistence.reconcile import reconcile

    _needs(settings, "redis_url", "database_url")
    report = asyncio.run(run_with_redis(settings, reconcile))
    print(report.render())
    return 0 if report.agrees else 1


COMMANDS: dict[str, tuple[Callable[[Settings], int], str]] = {
    "up": (command_up, "run the whole stack: embedded Redis and PostgreSQL, gateway, writer"),
    "serve": (command_serve, "run the gateway and admin API against REDIS_URL"),
    "migrate": (command_migrate, "apply the history's SQL migrations to DATABASE_URL"),
    "reconcile": (command_reconcile, "prove Redis and PostgreSQL agree; exit 1 if they do not"),
}
# the settings each command reads: its --help offers these only
COMMAND_SETTINGS: dict[str, tuple[str, ...]] = {
    "up": setting_names(),
    "serve": setting_names(excluding=EMBEDDED_ONLY_SETTINGS),
    "migrate": ("database_url", "log_level", "data_dir"),
    "reconcile": (*STORE_SETTINGS, "record_retention_seconds", "data_dir"),
}
# short flags of a command's settings: `up --redis-cluster 3`
SETTING_FLAG_ALIASES: dict[str, dict[str, str]] = {
    "up": {"--redis-cluster": "redis_cluster_masters"},
}


class Tool(Protocol):
    """A command with arguments of its own: a module with these two functions."""

    def add_arguments(self, parser: argparse.ArgumentParser) -> None: ...

    def run(self, args: argparse.Namespace) -> int: ...


# name -> (the tool's module, imported only once its command is chosen; the help line)
TOOLS: dict[str, tuple[str, str]] = {
    "simulate": (
        "provider.simulator",
        "play the game provider against a wallet (and serve its launch API)",
    ),
    "conformance": (
        "provider.conformance",
        "check any wallet against the protocol's rules; exit 1 on a FAIL",
    ),
    "bench": (
        "loadtests.bench",
        "benchmark the whole stack (wrk and locust); report, CPU per process, money check",
    ),
    "writer": (
        "persistence.writer",
        "drain the event streams into PostgreSQL (the durable history)",
    ),
    "restore": (
        "persistence.restore",
        "rebuild the hot wallet from PostgreSQL into an empty Redis",
    ),
    "call": ("provider.call", "sign and send one callback with the stack's keys; print the answer"),
    "admin": ("provider.admin_call", "one call of the admin API with the stack's token"),
    "faults": (
        "loadtests.faults",
        "run the fault and attack scenarios against a real stack; write RELIABILITY.md",
    ),
    "report": ("persistence.reports", "reports from the history: GGR per day, game and currency"),
}
# Commands that use a stack rather than run one: what they are not told, they take from the
# stack a `wallet-gateway up` runs from their DATA_DIR (gateway.recorded_stack).
STACK_CLIENTS = {
    "migrate",
    "reconcile",
    "restore",
    "simulate",
    "conformance",
    "call",
    "admin",
    "report",
}
# option -> the recorded stack's field it defaults to
STACK_DEFAULTS = {
    "url": "callbacks_url",
    "public_key": "public_key",
    "secret": "secret",
    "admin_url": "admin_url",
    "admin_token": "admin_token",
    "redis_url": "redis_url",
    "database_url": "database_url",
    "provider_keys": "provider_keys",
}
SETTING_ENV_NAMES = {setting.name: setting.metadata["env"] for setting in fields(Settings)}


def fill_from_running_stack(args: argparse.Namespace, environ: Mapping[str, str]) -> None:
    """Each option of STACK_DEFAULTS the command has and its flag left empty gets its
    environment variable's value (a setting's, such as ADMIN_TOKEN), else the running stack's."""
    if args.command not in STACK_CLIENTS:
        return
    stack = running_stack(data_dir_of(getattr(args, "data_dir", None)))
    for option, recorded in STACK_DEFAULTS.items():
        if not hasattr(args, option) or getattr(args, option):
            continue
        from_environment = environ.get(SETTING_ENV_NAMES.get(option, ""))
        if from_environment:
            setattr(args, option, from_environment)
        elif stack is not None:
            setattr(args, option, getattr(stack, recorded))


def load_tool(name: str) -> Tool:
    module, _ = TOOLS[name]
    return cast(Tool, importlib.import_module(module))


def build_parser(argv: Sequence[str] = ()) -> argparse.ArgumentParser:
    """Every command with its help line; the options of a tool only when `argv` chooses it
    (the top level has no options but --version: its first word is the command)."""
    chosen = next((word for word in argv if not word.startswith("-")), None)
    parser = argparse.ArgumentParser(
        prog="wallet-gateway",
        description=__doc__,
        epilog="Start with `wallet-gateway up`; `wallet-gateway COMMAND --help` for a command.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    subcommands = parser.add_subparsers(dest="command", required=True)
    for name, (_, help_text) in COMMANDS.items():
        subparser = subcommands.add_parser(name, help=help_text, description=help_text)
        add_setting_flags(subparser, COMMAND_SETTINGS[name])
        for alias, setting in SETTING_FLAG_ALIASES.get(name, {}).items():
            long_flag = "--" + setting.replace("_", "-")
            subparser.add_argument(alias, dest=setting, default=None, help=f"= {long_flag}")
    for name, (_, help_text) in TOOLS.items():
        subparser = subcommands.add_parser(name, help=help_text, description=help_text)
        if name == chosen:
            load_tool(name).add_arguments(subparser)
    return parser


def _version() -> str:
    try:
        return importlib.metadata.version("wallet-gateway")
    except importlib.metadata.PackageNotFoundError:  # run from a tree that is not installed
        return "unknown"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser(argv).parse_args(argv)
    try:
        fill_from_running_stack(args, os.environ)
        if args.command in TOOLS:
            configure_logging("WARNING")  # a tool that reads settings sets their level itself
            return load_tool(args.command).run(args)
        settings = load_settings(args)
        configure_logging(settings.log_level)
        command, _ = COMMANDS[args.command]
        return command(settings)
    except (ValueError, OSError, RuntimeError) as exc:
        print(f"wallet-gateway: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
