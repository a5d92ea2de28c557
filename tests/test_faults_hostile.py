"""Scenario 6 of `wallet-gateway faults` (loadtests/faults/hostile.py) at CI scale, against a
real stack of its own: schemathesis, hypothesis bodies and headers, forged signatures and
tokens, slow and oversized senders, while honest traffic plays. About 15 s.

Slow senders, a slowloris, never-ending bodies and idle connections are cut by the gateway's
limits (CLIENT_TIMEOUT_SECONDS, the 64 KiB body limit) while the honest clients are answered.
"""

import asyncio
from pathlib import Path

import pytest

from loadtests.faults.hostile import IDLE_CONNECTIONS, hostile_input, hostile_scales
from loadtests.faults.report import ScenarioResult

pytestmark = pytest.mark.slow


def explain(result: ScenarioResult) -> str:
    return "\n".join([f"{result.name}: {result.failures}", *result.notes])


def test_hostile_input_moves_nothing_and_hurts_no_honest_client(tmp_path: Path) -> None:
    (result,) = asyncio.run(hostile_input(tmp_path, hostile_scales()[1]))
    measured = result.measured
    assert result.passed, explain(result)
    # no 5xx but the deliberate 503, to the hostile side or the honest one
    assert set(result.five_xx) <= {"503"}, result.five_xx
    assert measured["answers not in the envelope"] == 0
    # every phase sent something
    sent = measured["hostile requests sent, by phase"]
    for phase in ("schemathesis", "bodies", "headers", "signatures", "replays", "admin"):
        assert sent.get(phase, 0) > 0, sent
    assert measured["broken calls accepted"] == {}
    # the security rows: tried > 0, accepted 0
    tried, accepted = map(int, measured["unauthorised calls tried / accepted"].split(" / "))
    assert tried > 0 and accepted == 0
    admin_tried, admin_accepted = map(
        int, measured["admin calls without or with a wrong token tried / accepted"].split(" / ")
    )
    assert admin_tried > 0 and admin_accepted == 0
    assert measured["bad signatures refused otherwise than 401"] == 0
    assert measured["admin calls refused otherwise than 401"] == 0
    # a captured honest bet, replayed elsewhere, applies as nothing else
    assert measured["captured bet replayed to, status"]["/deposit"] == 400
    # nothing moves
    assert measured["victims' balances moved"] == {}
    assert measured["history rows of the victims"] == 0
    assert measured["history rows no honest or accepted call explains"] == 0
    assert measured["Redis keys naming a hostile id"] == 0
    assert result.money_lost == result.money_doubled == 0
    assert result.reconcile_agrees
    # the limits the gateway has
    assert set(measured["oversized bodies, status"].values()) == {413}
    assert measured["never-ending chunked body, 1 KiB chunks"].startswith("answered 413")
    assert measured["slow sender: headers, then 1 body byte per 100 ms"].startswith("answered 408")
    assert measured["never-ending chunked body, 1-byte chunks every 100 ms"].startswith(
        "answered 408"
    )
    idle = (
        "slowloris: 1 header byte per 100 ms",
        "keep-alive connection idle after one answer",
        f"{IDLE_CONNECTIONS} idle connections",
    )
    for label in idle:
        assert "NOT cut off" not in measured[label], measured[label]
    # the honest clients meanwhile
    assert result.acknowledged > 0
    assert all(
        count > 0 for count in measured["honest calls acknowledged during each phase"].values()
    )
    answered, _, rest = measured[
        "new clients during the abuse: answered / tried, slowest ms"
    ].partition(" / ")
    assert int(answered) == int(rest.split(",")[0]) > 0
