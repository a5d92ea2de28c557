"""The import arrows point one way (docs/design.md, Package layout). The modules' imports are
read with `ast`, nothing is imported: every `import` and `from ... import`, at the top or
inside a function.

- No import cycle between modules.
- persistence uses only the gateway's leaf modules below, and those import nothing else of
  the service: the history never pulls in the hot wallet, the HTTP handlers or the CLI.
- Of the gateway, only the CLI (the composition root) may reach the provider's tools; and
  nothing imports the CLI (its lazily loaded tools are named by module path, not imported).
- persistence serves no HTTP: no aiohttp.web, no HTTP module of the gateway.
"""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("gateway", "persistence", "provider", "loadtests", "lua")

COMPOSITION_ROOT = "gateway.cli"
# What persistence may use of the gateway, and why it lives there.
GATEWAY_LEAVES_FOR_PERSISTENCE = {
    "gateway.keys": "the one place that knows key names and shards",
    "gateway.settings": "the one settings object, and its flags for the writer's command line",
    "gateway.schemas": "the actions and the request fingerprint the history stores",
    "gateway.outcomes": "the outcome names, incidents among them",
    "gateway.clock": "milliseconds since the epoch, as records and events carry them",
    "gateway.redis_errors": "what an unreachable Redis is, and the 503 the history answers too",
    "gateway.seen_filter": "the filter offsets restore sets again",
    "gateway.backoff": "the waits between retries of the writer, as of the supervisor",
    "gateway.logs": "the JSON log lines of the writer process",
    "gateway.redis_connection": "client names and connect limits of every Redis client",
    "gateway.embedded": "the embedded servers the writer benchmark starts",
}
GATEWAY_HTTP_MODULES = {
    "gateway.callbacks",
    "gateway.admin",
    "gateway.app",
    "gateway.server",
    "gateway.support",
    "gateway.operations",
}
WEB_FRAMEWORK = "aiohttp.web"  # and its submodules aiohttp.web_*


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def find_modules() -> dict[str, Path]:
    return {
        module_name(path): path
        for package in PACKAGES
        for path in sorted((ROOT / package).rglob("*.py"))
    }


MODULES = find_modules()


def imported_names(module: str) -> set[str]:
    """Every module `module` imports: ours resolved to the module (`from gateway import clock`
    is gateway.clock), others as written (`from aiohttp import web` is aiohttp.web)."""
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            for alias in node.names:
                submodule = f"{base}.{alias.name}"
                names.add(submodule if submodule in MODULES or base not in MODULES else base)
    return names


IMPORTS = {module: imported_names(module) for module in MODULES}


def edges(module: str) -> set[str]:
    """The modules of ours that `module` imports."""
    return IMPORTS[module] & MODULES.keys()


def in_package(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def find_cycles() -> list[list[str]]:
    """One cycle per back edge of a depth-first walk; none when the graph is acyclic."""
    cycles: list[list[str]] = []
    done: set[str] = set()
    path: list[str] = []

    def visit(module: str) -> None:
        path.append(module)
        for target in sorted(edges(module)):
            if target in path:
                cycles.append([*path[path.index(target) :], target])
            elif target not in done:
                visit(target)
        path.pop()
        done.add(module)

    for module in sorted(MODULES):
        if module not in done:
            visit(module)
    return cycles


def test_the_layout_is_read_from_every_package() -> None:
    assert {"gateway.cli", "gateway.wallet", "persistence.writer", "loadtests.bench"} <= set(
        MODULES
    )
    assert "persistence.postgres" in edges("persistence.writer")  # reading works at all


def test_no_module_imports_itself_through_others() -> None:
    cycles = find_cycles()
    assert not cycles, "\n".join(" -> ".join(cycle) for cycle in cycles)


def test_persistence_uses_only_the_gateways_leaf_modules() -> None:
    used = {
        (module, target)
        for module in MODULES
        if in_package(module, "persistence")
        for target in edges(module)
        if in_package(target, "gateway") and target not in GATEWAY_LEAVES_FOR_PERSISTENCE
    }
    assert not used, sorted(used)


def test_the_leaf_modules_import_only_each_other() -> None:
    assert set(GATEWAY_LEAVES_FOR_PERSISTENCE) <= set(MODULES)
    beyond = {
        (leaf, target)
        for leaf in GATEWAY_LEAVES_FOR_PERSISTENCE
        for target in edges(leaf)
        if target not in GATEWAY_LEAVES_FOR_PERSISTENCE
    }
    assert not beyond, sorted(beyond)


def test_only_the_cli_reaches_the_provider_and_nothing_imports_the_cli() -> None:
    to_provider = {
        (module, target)
        for module in MODULES
        if in_package(module, "gateway") and module != COMPOSITION_ROOT
        for target in edges(module)
        if in_package(target, "provider")
    }
    assert not to_provider, sorted(to_provider)
    to_cli = sorted(module for module in MODULES if COMPOSITION_ROOT in edges(module))
    assert not to_cli, to_cli


def test_persistence_serves_no_http() -> None:
    serving = {
        (module, name)
        for module in MODULES
        if in_package(module, "persistence")
        for name in IMPORTS[module]
        if name.startswith(WEB_FRAMEWORK) or name in GATEWAY_HTTP_MODULES
    }
    assert not serving, sorted(serving)
