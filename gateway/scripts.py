"""Loads the Lua scripts of `lua/` once; calls go out as EVALSHA (redis-py reloads on NOSCRIPT)."""

from dataclasses import dataclass
from importlib.resources import files

from redis.asyncio import Redis
from redis.commands.core import AsyncScript

from gateway.script_arguments import MONEY_SCRIPT_LAYOUTS

MONEY_SCRIPTS = tuple(MONEY_SCRIPT_LAYOUTS)
PLAIN_SCRIPTS = (
    "claim",
    "authenticate",
    "open_session",
    "redeem_user_token",
    "create_player",
    "adjust_balance",
    "bring_back_record",
)


def script_source(name: str) -> str:
    lua = files("lua")
    source = (lua / f"{name}.lua").read_text()
    if name in MONEY_SCRIPTS:
        # Redis scripts cannot include each other: the shared part is prepended.
        source = (lua / "money_common.lua").read_text() + "\n" + source
    return source


@dataclass(frozen=True, slots=True)
class Scripts:
    withdraw: AsyncScript
    credit: AsyncScript
    rollback: AsyncScript
    close_round: AsyncScript
    claim: AsyncScript
    authenticate: AsyncScript
    open_session: AsyncScript
    redeem_user_token: AsyncScript
    create_player: AsyncScript
    adjust_balance: AsyncScript
    bring_back_record: AsyncScript

    @classmethod
    def register(cls, redis: Redis) -> "Scripts":
        return cls(
            **{
                name: redis.register_script(script_source(name))
                for name in MONEY_SCRIPTS + PLAIN_SCRIPTS
            }
        )

    def shas(self) -> list[str]:
        return [getattr(self, name).sha for name in MONEY_SCRIPTS + PLAIN_SCRIPTS]

    async def load_all(self, redis: Redis) -> None:
        """SCRIPT LOAD everything up front, so the first callbacks need no NOSCRIPT round trip."""
        for name in MONEY_SCRIPTS + PLAIN_SCRIPTS:
            script: AsyncScript = getattr(self, name)
            await redis.script_load(script.script)
