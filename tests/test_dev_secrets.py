"""`serve` and docker-compose.yml's development secrets: accepted only on a stack DEV_STACK says is
published on loopback alone (gateway/dev_secrets.py)."""

import pytest
from instances import cli, cli_env, refusal

from gateway.dev_secrets import DEV_SECRETS, dev_secret_refusal, dev_secrets_in
from gateway.settings import Settings, load_settings

OWN_KEYS = "pk-own:own-secret"
OWN_TOKEN = "own-admin-token"
OWN_DATABASE_URL = "postgresql://wallet:own-password@postgres:5432/wallet"
# what docker-compose.yml falls back to
DEV_KEYS = "dev-public:dev-secret"
DEV_TOKEN = "dev-admin-token"
DEV_DATABASE_URL = "postgresql://wallet:wallet-dev@postgres:5432/wallet"


def settings(**changes: str) -> Settings:
    own = Settings(
        redis_url="redis://redis:6379/0",
        database_url=OWN_DATABASE_URL,
        provider_keys=OWN_KEYS,
        admin_token=OWN_TOKEN,
    )
    return own.replace(**changes)


def test_the_known_secrets_are_the_compose_files() -> None:
    assert {DEV_TOKEN, DEV_KEYS.partition(":")[2], "wallet-dev"} == DEV_SECRETS


@pytest.mark.parametrize(
    ("changes", "named"),
    [
        ({"admin_token": DEV_TOKEN}, ["ADMIN_TOKEN"]),
        ({"provider_keys": DEV_KEYS}, ["PROVIDER_KEYS"]),
        ({"provider_keys": f"{OWN_KEYS},{DEV_KEYS}"}, ["PROVIDER_KEYS"]),  # one of a rotation
        ({"database_url": DEV_DATABASE_URL}, ["DATABASE_URL"]),
        (
            {"admin_token": DEV_TOKEN, "provider_keys": DEV_KEYS, "database_url": DEV_DATABASE_URL},
            ["ADMIN_TOKEN", "PROVIDER_KEYS", "DATABASE_URL"],
        ),
    ],
)
def test_each_development_secret_is_found_by_its_setting(
    changes: dict[str, str], named: list[str]
) -> None:
    assert dev_secrets_in(settings(**changes)) == named


def test_own_secrets_need_no_dev_stack() -> None:
    assert dev_secrets_in(settings()) == []
    assert dev_secret_refusal(settings()) is None
    assert dev_secret_refusal(settings(dev_stack="0.0.0.0")) is None  # published, own secrets
    # a public key named like the compose file's is no secret
    assert dev_secret_refusal(settings(provider_keys="dev-public:own-secret")) is None


def test_a_development_secret_is_refused_unless_a_dev_stack_is_named() -> None:
    refusal = dev_secret_refusal(settings(admin_token=DEV_TOKEN))
    assert refusal is not None and "\n" not in refusal
    assert refusal.startswith("ADMIN_TOKEN holds a development secret of docker-compose.yml")
    assert "DEV_STACK" in refusal
    assert DEV_TOKEN not in refusal


@pytest.mark.parametrize(
    "dev_stack",
    ["127.0.0.1", "127.0.0.1,127.0.0.1,127.0.0.1", "::1", "[::1],127.0.0.2", "localhost"],
)
def test_a_development_secret_is_accepted_on_a_loopback_dev_stack(dev_stack: str) -> None:
    assert dev_secret_refusal(settings(admin_token=DEV_TOKEN, dev_stack=dev_stack)) is None


@pytest.mark.parametrize(
    "dev_stack", ["0.0.0.0", "127.0.0.1,0.0.0.0,127.0.0.1", "::", "192.168.1.20", "[::],127.0.0.1"]
)
def test_a_development_secret_is_refused_when_any_address_is_beyond_loopback(
    dev_stack: str,
) -> None:
    refusal = dev_secret_refusal(settings(provider_keys=DEV_KEYS, dev_stack=dev_stack))
    assert refusal is not None and "\n" not in refusal
    assert "PROVIDER_KEYS holds a development secret" in refusal
    assert "published beyond loopback" in refusal


@pytest.mark.parametrize("dev_stack", ["1", "yes", "true", "127.0.0.1,", "dev"])
def test_dev_stack_is_addresses_not_a_switch(dev_stack: str) -> None:
    with pytest.raises(ValueError, match=r"^DEV_STACK must list the addresses"):
        load_settings(environ={"DEV_STACK": dev_stack})


def serve(**environment: str) -> tuple[int, str]:
    """`wallet-gateway serve` in a child process (its logging set up as in production) with
    exactly these settings in the environment: (exit code, stderr)."""
    env = cli_env(**environment)
    for name in {"DATABASE_URL", "PROVIDER_KEYS", "ADMIN_TOKEN", "DEV_STACK"} - environment.keys():
        env.pop(name, None)
    return refusal(cli("serve"), env)


@pytest.mark.parametrize("dev_stack", [None, "0.0.0.0,127.0.0.1,127.0.0.1"])
def test_serve_refuses_a_development_secret_with_one_line(dev_stack: str | None) -> None:
    """Before it touches Redis or a port: the refusal is the first thing it does."""
    environment = {
        "REDIS_URL": "redis://127.0.0.1:1/0",
        "PROVIDER_KEYS": DEV_KEYS,
        "ADMIN_TOKEN": DEV_TOKEN,
        **({"DEV_STACK": dev_stack} if dev_stack is not None else {}),
    }

    code, stderr = serve(**environment)

    assert code == 2
    assert stderr.count("\n") == 1
    assert stderr.startswith(
        "wallet-gateway: error: ADMIN_TOKEN and PROVIDER_KEYS hold a development secret of"
        " docker-compose.yml"
    )
    if dev_stack:
        assert "published beyond loopback (DEV_STACK: 0.0.0.0)" in stderr
    assert DEV_TOKEN not in stderr and "dev-secret" not in stderr
