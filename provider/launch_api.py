"""The provider's launch and game-list API (docs/protocol.md §8), as the simulator serves it, so
that the operator's `/admin/launch` works locally.

A real-money launch authenticates the player on the wallet (/auth) and opens the player's account
with the balance the wallet reported; the simulator's ledger then plays on that account.
"""

import asyncio
import secrets
from dataclasses import dataclass

from aiohttp import web

from provider.client import AUTH_PATH, CallbackReply, OperatorAdmin, ProviderClient, auth_body

CLASSIC_GAME = "chicken-race"
SERVER_DRIVEN_GAME = "aviadrone"
GAMES = (SERVER_DRIVEN_GAME, CLASSIC_GAME)
PLATFORMS = ("mobile", "desktop")
PORTAL_MODES = ("real", "demo")
LAUNCH_QUERY_REQUIRED = ("userToken", "currency", "platform", "portalMode", "returnUrl", "language")
PLAYERS_MAX = 1_000
LAUNCH_API_PORT_DEFAULT = 9090
# where `wallet-gateway up` sends its launch calls unless PROVIDER_BASE_URL says otherwise
LAUNCH_API_URL_DEFAULT = f"http://127.0.0.1:{LAUNCH_API_PORT_DEFAULT}"


@dataclass
class PlayerAccount:
    """One launched player, and the balance the simulator's ledger says the wallet must hold."""

    user_id: str
    session_token: str
    currency: str
    balance_millis: int
    maxbet_millis: int
    uncertain: bool = False  # a money call never got a definitive answer: balance unknown


def check_within(name: str, value: float, maximum: float, minimum: float = 0) -> None:
    if not minimum <= value <= maximum:
        raise ValueError(f"{name} must be within {minimum}..{maximum}")


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


class LaunchApi:
    """Serves the launch API for one operator and keeps the accounts its launches opened."""

    def __init__(self, client: ProviderClient, operator_id: str) -> None:
        self.client = client
        self.operator_id = operator_id
        self.players: dict[str, PlayerAccount] = {}
        self.base_url = ""
        self._player_arrived = asyncio.Event()
        self._runner: web.AppRunner | None = None

    def app(self) -> web.Application:
        app = web.Application()
        app.add_routes(
            [
                web.get("/api/v1/launch/{game}", self._launch),
                web.get("/api/v1/games", self._list_games),
                web.get("/play/{game}", self._game_page),
            ]
        )
        return app

    async def start_server(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Serve the launch API; -> its base URL (port 0 picks a free port)."""
        runner = web.AppRunner(self.app(), access_log=None)
        await runner.setup()
        await web.TCPSite(runner, host, port).start()
        self._runner = runner
        bound_port = runner.addresses[0][1]
        self.base_url = f"http://{host}:{bound_port}"
        return self.base_url

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _list_games(self, request: web.Request) -> web.Response:
        operator_id = request.query.get("operatorId")
        if not operator_id:
            return _error(400, "operatorId is required")
        if operator_id != self.operator_id:
            return _error(404, f"unknown operator {operator_id}")
        return web.json_response(list(GAMES))

    async def _game_page(self, request: web.Request) -> web.Response:
        return web.Response(text=f"simulated {request.match_info['game']}\n")

    async def _launch(self, request: web.Request) -> web.Response:
        if request.headers.get("X-Public-Key") != self.client.public_key:
            return _error(401, "unknown X-Public-Key")
        game = request.match_info["game"]
        if game not in GAMES:
            return _error(404, f"unknown game {game}")
        query = request.query
        missing = [name for name in LAUNCH_QUERY_REQUIRED if not query.get(name)]
        if missing:
            return _error(400, "missing query parameters: " + ", ".join(missing))
        if query["platform"] not in PLATFORMS or query["portalMode"] not in PORTAL_MODES:
            return _error(400, "platform must be mobile|desktop and portalMode real|demo")
        session_token = f"sim-{secrets.token_urlsafe(18)}"
        launch = {
            "launch_url": f"{self.base_url}/play/{game}?session={session_token}",
            "session_token": session_token,
        }
        if query["portalMode"] == "demo":
            return web.json_response(launch)  # fun money: the wallet is never called
        if len(self.players) >= PLAYERS_MAX:
            return _error(503, f"the simulator holds {PLAYERS_MAX} players at most")
        reply = await self.client.deliver(
            AUTH_PATH,
            auth_body(
                session_token=session_token,
                user_token=query["userToken"],
                currency=query["currency"],
                game=game,
                platform=query["platform"],
            ),
        )
        if reply is None or self._register(reply, session_token) is None:
            answer = "no answer" if reply is None else f"{reply.status} {reply.body!r}"
            return _error(502, f"wallet /auth did not accept the player: {answer}")
        return web.json_response(launch)

    def _register(self, reply: CallbackReply, session_token: str) -> PlayerAccount | None:
        data = reply.data
        if reply.status != 200 or not isinstance(data, dict):
            return None
        user_id, currency = data.get("user_id"), data.get("currency")
        balance, maxbet = data.get("balance"), data.get("maxbet")
        if not (isinstance(user_id, str) and isinstance(currency, str)):
            return None
        if type(balance) is not int or type(maxbet) is not int:
            return None
        account = self.players.get(user_id)
        if account is None:
            account = PlayerAccount(user_id, session_token, currency, balance, maxbet)
            self.players[user_id] = account
            self._player_arrived.set()
        else:
            # a new launch replaces the live session (docs/protocol.md §8); the ledger carries on
            account.session_token = session_token
        return account

    async def wait_for_players(self, count: int, timeout_seconds: float) -> int:
        """Wait until `count` players launched (or the time is up); -> how many did."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_seconds
        while len(self.players) < count:
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            self._player_arrived.clear()
            try:
                await asyncio.wait_for(self._player_arrived.wait(), remaining)
            except TimeoutError:
                break
        return len(self.players)

    async def launch_players(
        self, admin: OperatorAdmin, count: int, currency: str, balance_millis: int
    ) -> list[PlayerAccount]:
        """Create players through the operator's admin API and launch a game for each; the
        operator then calls this launch API, which authenticates the player."""
        check_within("players", count, PLAYERS_MAX)
        launched = []
        for _ in range(count):
            user_id = admin.new_user_id()
            await admin.create_player(user_id, currency, balance_millis)
            launch = await admin.launch(user_id, SERVER_DRIVEN_GAME)
            account = self.players.get(user_id)
            if account is None or account.session_token != launch.get("session_token"):
                raise RuntimeError(
                    f"the launch of {user_id} did not reach this simulator: does the wallet's"
                    f" PROVIDER_BASE_URL point at {self.base_url}?"
                )
            launched.append(account)
        return launched
