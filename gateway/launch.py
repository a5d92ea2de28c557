"""Client of the provider's launch API (docs/protocol.md §8): operator -> provider."""

from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import aiohttp
import orjson

from gateway.schemas import InvalidRequest, identifier

LAUNCH_TIMEOUT_SECONDS = 10
PROVIDER_REASON_CHARS_MAX = 200


class ProviderUnavailable(Exception):
    """The provider did not answer, or answered something other than a launch."""


@dataclass(frozen=True, slots=True)
class Launch:
    launch_url: str
    session_token: str


@dataclass(frozen=True, slots=True)
class LaunchRequest:
    game: str
    user_token: str
    currency: str
    platform: str  # mobile | desktop
    portal_mode: str  # real | demo
    return_url: str
    language: str  # ISO 639-1

    def query(self) -> dict[str, str]:
        return {
            "userToken": self.user_token,
            "currency": self.currency,
            "platform": self.platform,
            "portalMode": self.portal_mode,
            "returnUrl": self.return_url,
            "language": self.language,
        }


def _reason_in(body: bytes) -> str:
    """The provider's own words for a refusal: its JSON `error` or `message`, else the start
    of its text; one line, bounded, so that a provider's page cannot flood our answer."""
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError:
        parsed = None
    if isinstance(parsed, dict):
        words = parsed.get("error") or parsed.get("message")
        text = words if isinstance(words, str) else ""
    else:
        text = body.decode(errors="replace")
    return " ".join(text.split())[:PROVIDER_REASON_CHARS_MAX]


class LaunchClient:
    def __init__(self, base_url: str, public_key: str, operator_id: str) -> None:
        self.base_url = base_url.rstrip("/")
        self.public_key = public_key
        self.operator_id = operator_id
        self._timeout = aiohttp.ClientTimeout(total=LAUNCH_TIMEOUT_SECONDS)

    async def _get_json(self, path: str, params: dict[str, str]) -> Any:
        if not self.base_url:
            raise ProviderUnavailable("PROVIDER_BASE_URL is not set")
        try:
            async with aiohttp.ClientSession(timeout=self._timeout) as session:
                async with session.get(
                    self.base_url + path,
                    params=params,
                    headers={"X-Public-Key": self.public_key},
                ) as response:
                    if response.status != 200:
                        reason = _reason_in(await response.read()) or "no reason given"
                        raise ProviderUnavailable(f"provider answered {response.status}: {reason}")
                    try:
                        return await response.json(content_type=None)
                    except ValueError as exc:
                        raise ProviderUnavailable("provider answered something not JSON") from exc
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise ProviderUnavailable(f"provider unreachable: {exc}") from exc

    async def launch(self, request: LaunchRequest) -> Launch:
        # a game id is any printable text: '/', '?' or '#' in it must not reshape the URL
        game_path = quote(request.game, safe="")
        payload = await self._get_json(f"/api/v1/launch/{game_path}", request.query())
        fields = payload if isinstance(payload, dict) else {}
        launch_url = fields.get("launch_url")
        # str(None) would be a URL or a session named "None"
        if not (isinstance(launch_url, str) and launch_url):
            raise ProviderUnavailable("provider's launch answer lacks launch_url")
        try:
            # the provider's later /auth must be able to name this session
            session_token = identifier(fields, "session_token")
        except InvalidRequest as exc:
            raise ProviderUnavailable(f"provider's launch answer: {exc}") from exc
        return Launch(launch_url, session_token)

    async def list_games(self) -> list[Any]:
        return await self._get_json("/api/v1/games", {"operatorId": self.operator_id})
