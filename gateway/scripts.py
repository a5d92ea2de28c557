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


def claim_and_decide_source(money_script: str) -> str:
    """lua/claim_and_decide.lua after lua/claim.lua and the money script, each made a function
    of its own KEYS and ARGV (its top-level `return` returns from it)."""
    return "\n".join(
        (
            "local function claim(KEYS, ARGV)",
            script_source("claim"),
            "end",
            "local function decide(KEYS, ARGV)",
            script_source(money_script),
            "end",
            script_source("claim_and_decide"),
        )
    )


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
    # each money script with its claims, both steps in one (one Redis only): by money script
    claimed_and_decided: dict[str, AsyncScript]

    @classmethod
    def register(cls, redis: Redis) -> "Scripts":
        return cls(
            **{
                name: redis.register_script(script_source(name))
                for name in MONEY_SCRIPTS + PLAIN_SCRIPTS
            },
            claimed_and_decided={
                name: redis.register_script(claim_and_decide_source(name)) for name in MONEY_SCRIPTS
            },
        )

    def all(self) -> list[AsyncScript]:
        return [getattr(self, name) for name in MONEY_SCRIPTS + PLAIN_SCRIPTS] + list(
            self.claimed_and_decided.values()
        )

    def shas(self) -> list[str]:
        return [script.sha for script in self.all()]

    async def load_all(self, redis: Redis) -> None:
        """SCRIPT LOAD everything up front, so the first callbacks need no NOSCRIPT round trip."""
        for script in self.all():
            await redis.script_load(script.script)
