"""Client of the provider's launch API (PROTOCOL.md §8): operator -> provider."""

from dataclasses import dataclass
from typing import Any

import aiohttp

LAUNCH_TIMEOUT_SECONDS = 10


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
                        raise ProviderUnavailable(f"provider answered {response.status}")
                    return await response.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise ProviderUnavailable(f"provider unreachable: {exc}") from exc

    async def launch(self, request: LaunchRequest) -> Launch:
        payload = await self._get_json(f"/api/v1/launch/{request.game}", request.query())
        try:
            return Launch(str(payload["launch_url"]), str(payload["session_token"]))
        except (KeyError, TypeError) as exc:
            raise ProviderUnavailable(
                "provider's launch answer lacks launch_url/session_token"
            ) from exc

    async def list_games(self) -> list[Any]:
        return await self._get_json("/api/v1/games", {"operatorId": self.operator_id})
