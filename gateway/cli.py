"""`wallet-gateway`: a thin command line over the library."""

import argparse
import asyncio
import importlib
import logging
import sys
from collections.abc import Callable, Sequence
from typing import Protocol, cast

from gateway.instance import check_ports_free, data_dir_locked
from gateway.logs import configure_logging
from gateway.settings import Settings, add_setting_flags, load_settings
from gateway.signing import KeyRing

# The composition root (DESIGN.md): the one module that may import every package. It imports
# what a command runs only when that command runs, so `--help` or one tool loads no other.

log = logging.getLogger("gateway.cli")


def _print_banner(settings: Settings) -> None:
    key_ring = KeyRing.parse(settings.provider_keys)
    lines = [
        "wallet-gateway is up",
        f"  callbacks  http://{settings.gateway_host}:{settings.gateway_port}"
        "  (/auth /withdraw /deposit /balance)",
        f"  admin API  http://{settings.admin_host}:{settings.admin_port}/admin",
        f"  redis      {settings.redis_url}",
        f"  postgres   {settings.database_url or '(none)'}",
        f"  admin token  {settings.admin_token}",
    ]
    lines += [
        f"  provider key {public}  secret {key_ring.secret(public)}"
        for public in key_ring.public_keys()
    ]
    lines.append("Ctrl-C stops everything.")
    print("\n".join(lines), flush=True)


def command_up(settings: Settings) -> int:
    from gateway import server
    from gateway.stack import EmbeddedStack, ensure_credentials
    from persistence.schema import migrate

    with data_dir_locked(settings.data_dir):
        check_ports_free(settings)
        settings = ensure_credentials(settings)
        stack = EmbeddedStack(settings)
        try:
            settings = stack.start(settings)
            asyncio.run(migrate(settings.database_url))
            server.run(settings, started=lambda: _print_banner(settings), with_writer=True)
        finally:
            stack.stop()
    return 0


def command_serve(settings: Settings) -> int:
    from gateway import server

    if not settings.redis_url:
        raise ValueError("serve needs REDIS_URL (or use `wallet-gateway up`)")
    if not settings.provider_keys or not settings.admin_token:
        raise ValueError("serve needs PROVIDER_KEYS and ADMIN_TOKEN")
    check_ports_free(settings)
    server.run(settings, started=lambda: log.info("serving on port %s", settings.gateway_port))
    return 0


def _needs(settings: Settings, *names: str) -> Settings:
    missing = [name.upper() for name in names if not getattr(settings, name)]
    if missing:
        raise ValueError(f"this command needs {' and '.join(missing)}")
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
        "benchmark the whole stack with locust; report, chart and money check",
    ),
    "writer": (
        "persistence.writer",
        "drain the event streams into PostgreSQL (the durable history)",
    ),
    "restore": (
        "persistence.restore",
        "rebuild the hot wallet from PostgreSQL into an empty Redis",
    ),
}


def load_tool(name: str) -> Tool:
    module, _ = TOOLS[name]
    return cast(Tool, importlib.import_module(module))


def build_parser(argv: Sequence[str] = ()) -> argparse.ArgumentParser:
    """Every command with its help line; the options of a tool only when `argv` chooses it
    (the top level has no options of its own: its first word is the command)."""
    chosen = next((word for word in argv if not word.startswith("-")), None)
    parser = argparse.ArgumentParser(prog="wallet-gateway", description=__doc__)
    subcommands = parser.add_subparsers(dest="command", required=True)
    for name, (_, help_text) in COMMANDS.items():
        add_setting_flags(subcommands.add_parser(name, help=help_text))
    for name, (_, help_text) in TOOLS.items():
        subparser = subcommands.add_parser(name, help=help_text)
        if name == chosen:
            load_tool(name).add_arguments(subparser)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser(argv).parse_args(argv)
    try:
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
