"""The one place that knows Redis key names.

Every key carries a hash tag `{shard}` so that all keys one script touches share a cluster slot.
A player's keys, the idempotency records of their money calls and the stream their events go to
live in the player's shard. CLOSE_ROUND has no player: it lives in the shard of its round.
"""

import zlib

PREFIX = "w"
# Joins two identifiers in one key; it never occurs inside a printable identifier.
FIELD_SEPARATOR = "\x1f"
# The owner of a CLOSE_ROUND's tx id (it has no player): its round (lua/money_common.lua).
CLOSE_ROUND_OWNER_PREFIX = f"{FIELD_SEPARATOR}round{FIELD_SEPARATOR}"


def shard_of(identifier: str, shards: int) -> int:
    """The shard of a player (or of a round, for CLOSE_ROUND)."""
    return zlib.crc32(identifier.encode()) % shards


class KeySpace:
    def __init__(self, shards: int) -> None:
        self.shards = shards

    def shard(self, identifier: str) -> int:
        return shard_of(identifier, self.shards)

    @staticmethod
    def player(shard: int, user_id: str) -> str:
        return f"{PREFIX}:{{{shard}}}:player:{user_id}"

    @staticmethod
    def tx(shard: int, provider_tx_id: str) -> str:
        """Idempotency record of one money call, in the shard of its player."""
        return f"{PREFIX}:{{{shard}}}:tx:{provider_tx_id}"

    @staticmethod
    def tx_owner(shard: int, provider_tx_id: str) -> str:
        """Which player a provider_tx_id belongs to, in the shard of the tx id itself.

        It is what lets a script see a tx id reused for another player, or a rollback naming
        another player's bet, although those records live in another player's shard.
        """
        return f"{PREFIX}:{{{shard}}}:owner:{provider_tx_id}"

    @staticmethod
    def tombstone(shard: int, bet_tx_id: str) -> str:
        return f"{PREFIX}:{{{shard}}}:tomb:{bet_tx_id}"

    @staticmethod
    def early_win(shard: int, bet_tx_id: str) -> str:
        """A WIN that named this bet before the bet arrived: the bet comes already settled."""
        return f"{PREFIX}:{{{shard}}}:earlywin:{bet_tx_id}"

    @staticmethod
    def adjustment(shard: int, user_id: str, reference: str) -> str:
        """A cashier adjustment: its reference is the player's own (unique per player)."""
        return f"{PREFIX}:{{{shard}}}:adj:{user_id}{FIELD_SEPARATOR}{reference}"

    @staticmethod
    def session(shard: int, session_token: str) -> str:
        """A session, in its player's shard, so a bet checks it in the same script."""
        return f"{PREFIX}:{{{shard}}}:sess:{session_token}"

    @staticmethod
    def live_session(shard: int, user_id: str) -> str:
        """The player's one live session token: opening a new session closes the old one."""
        return f"{PREFIX}:{{{shard}}}:live:{user_id}"

    @staticmethod
    def session_index(shard: int, session_token: str) -> str:
        """session_token -> user_id, in the token's shard, for /auth which names no player."""
        return f"{PREFIX}:{{{shard}}}:sidx:{session_token}"

    @staticmethod
    def user_token(shard: int, user_token: str) -> str:
        """A one-time launch token, in the token's shard."""
        return f"{PREFIX}:{{{shard}}}:utok:{user_token}"

    @staticmethod
    def round_closed(shard: int, round_id: str) -> str:
        return f"{PREFIX}:{{{shard}}}:round:{round_id}"

    @staticmethod
    def seen_filter(shard: int) -> str:
        """Every tx id of the shard ever stored, for ever (gateway/seen_filter.py)."""
        return f"{PREFIX}:{{{shard}}}:seen"

    @staticmethod
    def events(shard: int) -> str:
        return f"{PREFIX}:{{{shard}}}:events"

    @staticmethod
    def incidents(shard: int) -> str:
        return f"{PREFIX}:{{{shard}}}:incidents"

    def all_streams(self) -> list[str]:
        return [self.events(shard) for shard in range(self.shards)]

    def all_incident_lists(self) -> list[str]:
        return [self.incidents(shard) for shard in range(self.shards)]
