"""§3 the envelope: every call of every rule checks it (`Probe.send`); this rule covers each
kind of answer."""

from provider.client import AUTH_PATH, BALANCE_PATH, WITHDRAW_PATH, auth_body, balance_body
from provider.conformance.probe import JSON_CONTENT, PLAYER_BALANCE_MILLIS, Probe, rule


@rule("§3")
async def every_answer_is_the_envelope(probe: Probe) -> None:
    player = await probe.player()
    await probe.expect(AUTH_PATH, auth_body(session_token=player.session_token), 200)
    await probe.expect(WITHDRAW_PATH, b"{", 401, headers=JSON_CONTENT)
    await probe.expect(WITHDRAW_PATH, b"{", 400)
    await probe.expect(BALANCE_PATH, balance_body(user_id=probe.unknown_player().user_id), 404)
    await probe.expect(WITHDRAW_PATH, probe.bet(player, PLAYER_BALANCE_MILLIS + 1), 402)
