"""The development secrets docker-compose.yml falls back to, and when `serve` accepts them.

The rule, simple on purpose: these secrets are public (they are in the repository), so a
gateway holding one is only safe where nobody else can reach it. `serve` accepts them only when
DEV_STACK lists the addresses the stack is published on and every one is loopback. Nothing
else says "development": an empty DEV_STACK (the default, and any deployment that never heard of
it) refuses them, and DEV_STACK=1 or yes is no address, so it is a bad setting rather than a
way round. docker-compose.yml sets DEV_STACK to its own publish addresses (PUBLISH_ADDRESS,
ADMIN_PUBLISH_ADDRESS, LOCUST_PUBLISH_ADDRESS): publishing any port beyond loopback with a
default secret left in makes the gateway refuse to start.
"""

from urllib.parse import unquote, urlsplit

from gateway.settings import Settings, dev_stack_addresses
from gateway.signing import KeyRing

# docker-compose.yml's defaults: ADMIN_TOKEN, the secret of PROVIDER_KEYS (dev-public:...) and
# POSTGRES_PASSWORD (in DATABASE_URL). tests/test_compose.py checks the file uses these.
DEV_SECRETS = frozenset({"dev-admin-token", "dev-secret", "wallet-dev"})


def dev_secrets_in(settings: Settings) -> list[str]:
    """The settings that hold a development secret, by their variable's name."""
    in_use = []
    if settings.admin_token in DEV_SECRETS:
        in_use.append("ADMIN_TOKEN")
    if settings.provider_keys:
        key_ring = KeyRing.parse(settings.provider_keys)
        if any(key_ring.secret(public) in DEV_SECRETS for public in key_ring.public_keys()):
            in_use.append("PROVIDER_KEYS")
    database_password = urlsplit(settings.database_url).password
    if database_password is not None and unquote(database_password) in DEV_SECRETS:
        in_use.append("DATABASE_URL")
    return in_use


def dev_secret_refusal(settings: Settings) -> str | None:
    """Why `serve` must not start with these settings (one line), or None."""
    in_use = dev_secrets_in(settings)
    if not in_use:
        return None
    *first, last = in_use
    named = f"{', '.join(first)} and {last} hold" if first else f"{last} holds"
    if not settings.dev_stack:
        return (
            f"{named} a development secret of docker-compose.yml: set a secret of your"
            " own, or DEV_STACK to the loopback addresses a development stack is published on"
        )
    beyond = [
        str(address)
        for address in dev_stack_addresses(settings.dev_stack)
        if not address.is_loopback
    ]
    if not beyond:
        return None
    return (
        f"{named} a development secret of docker-compose.yml, and the stack is published"
        f" beyond loopback (DEV_STACK: {', '.join(beyond)}): set a secret of your own"
    )
