"""CLOSE_ROUND on /deposit (docs/protocol.md §4): no money moves, two attributes in either shape,
exact multipliers, one event per round however often it is delivered."""

from typing import Any

import orjson
import pytest
from payloads import bet, close_round

from gateway.keys import KeySpace, shard_of

COEFFICIENTS = "aviadroneCashOutCoefficients"
STAKES = "aviadroneBets"


def with_attributes(payload: dict[str, Any], shape: str, encoding: str) -> dict[str, Any]:
    """The same two attributes as an object or a list of {name, value}, each value a native
    array or a JSON-encoded string of one."""
    values = dict(payload["attributes"])
    if encoding == "json_string":
        values = {name: orjson.dumps(value).decode() for name, value in values.items()}
    if shape == "list":
        return {**payload, "attributes": [{"name": n, "value": v} for n, v in values.items()]}
    return {**payload, "attributes": values}


async def close_round_events(services: Any, round_id: str) -> list[dict[str, str]]:
    """The tx events of the round's CLOSE_ROUND, from the stream of the round's shard."""
    keys: KeySpace = services.wallet.keys
    stream = keys.events(keys.shard(round_id))
    entries = await services.redis.xrange(stream)
    return [
        fields
        for _, fields in entries
        if fields.get("kind") == "tx"
        and fields.get("action") == "CLOSE_ROUND"
        and fields.get("round") == round_id
    ]


@pytest.mark.parametrize("shape", ["object", "list"])
@pytest.mark.parametrize("encoding", ["native", "json_string"])
async def test_close_round_accepts_both_attribute_shapes_and_encodings(
    provider, services, shape, encoding
):
    payload = with_attributes(close_round("r1", [1_000, 2_500], [0, 2.35]), shape, encoding)
    status, body = await provider.post("/deposit", payload)
    assert status == 200, body
    assert body == {
        "code": 200,
        "message": "OK",
        "data": {"provider_tx_id": "r1-operator-close-round", "round_id": "r1"},
    }
    [event] = await close_round_events(services, "r1")
    assert orjson.loads(event["stakes"]) == [1_000, 2_500]
    assert orjson.loads(event["coefficients"]) == ["0", "2.35"]


async def test_close_round_keeps_the_exact_coefficient_text(provider, services):
    coefficients = "[0,2.35,1.1,10.01,0.3,100]"
    payload = close_round("r1", [1, 2, 3, 4, 5, 6], coefficients)
    status, body = await provider.post("/deposit", payload)
    assert status == 200, body
    [event] = await close_round_events(services, "r1")
    assert orjson.loads(event["coefficients"]) == ["0", "2.35", "1.1", "10.01", "0.3", "100"]
    assert orjson.loads(event["stakes"]) == [1, 2, 3, 4, 5, 6]


async def test_close_round_keeps_coefficients_sent_as_decimal_strings(provider, services):
    payload = close_round("r1", [1_000, 1_000], ["0", "2.35"])
    status, body = await provider.post("/deposit", payload)
    assert status == 200, body
    [event] = await close_round_events(services, "r1")
    assert orjson.loads(event["coefficients"]) == ["0", "2.35"]


async def test_close_round_event_goes_to_the_shard_of_its_round(provider, services):
    round_id = "round-for-shard-check"
    payload = close_round(round_id, [1_000], [1.5])
    await provider.post("/deposit", payload)
    keys: KeySpace = services.wallet.keys
    round_shard = shard_of(round_id, keys.shards)
    for shard in range(keys.shards):
        entries = await services.redis.xrange(keys.events(shard))
        close_events = [f for _, f in entries if f.get("action") == "CLOSE_ROUND"]
        assert len(close_events) == (1 if shard == round_shard else 0), shard
    [event] = await close_round_events(services, round_id)
    assert event["tx"] == f"{round_id}-operator-close-round"
    assert event["amount"] == "0" and event["delta"] == "0"


async def test_close_round_moves_no_money(provider, admin):
    await admin.create_player("alice", 10_000)
    session = await admin.open_session("alice")
    await provider.post("/withdraw", bet("alice", session, "b1", 1_000, round_id="r1"))
    status, _ = await provider.post("/deposit", close_round("r1", [1_000], [2.35]))
    assert status == 200
    assert await admin.balance("alice") == 9_000


async def test_close_round_redelivery_replays_identically_and_records_one_event(provider, services):
    body = orjson.dumps(close_round("r1", [1_000, 2_000], [0, 2.35]))
    first = await provider.post_raw("/deposit", body)
    retries = [await provider.post_raw("/deposit", body) for _ in range(3)]
    assert first[0] == 200
    assert retries == [first] * 3
    assert len(await close_round_events(services, "r1")) == 1


async def test_close_round_redelivered_in_the_other_attribute_shape_replays(provider, services):
    payload = close_round("r1", [1_000, 2_000], [0, 2.35])
    first = await provider.post_raw("/deposit", orjson.dumps(payload))
    redelivered = with_attributes(payload, "list", "json_string")
    retry = await provider.post_raw("/deposit", orjson.dumps(redelivered))
    assert retry == first
    assert len(await close_round_events(services, "r1")) == 1


@pytest.mark.parametrize(
    "changes",
    [{"round_id": "r2"}, {"round_id": "r1-again-3"}, {"game": "chicken-race"}],
    ids=["round_id_in_another_shard", "round_id_in_the_same_shard", "game"],
)
async def test_close_round_tx_id_reused_with_different_content_is_409(provider, services, changes):
    payload = close_round("r1", [1_000], [2])
    status, _ = await provider.post("/deposit", payload)
    assert status == 200
    status, body = await provider.post("/deposit", {**payload, **changes})
    assert status == 409, body
    assert body["data"] is None
    assert len(await close_round_events(services, changes.get("round_id", "r1"))) == (
        1 if "round_id" not in changes else 0
    )


async def test_close_round_reusing_a_bet_tx_id_is_409(provider, admin, services):
    await admin.create_player("alice", 10_000)
    session = await admin.open_session("alice")
    await provider.post("/withdraw", bet("alice", session, "r1-operator-close-round", 1_000))
    status, body = await provider.post("/deposit", close_round("r1", [1_000], [0]))
    assert status == 409, body
    assert await close_round_events(services, "r1") == []
    assert await admin.balance("alice") == 9_000


async def test_bet_reusing_a_close_round_tx_id_is_409_and_moves_nothing(provider, admin):
    await admin.create_player("alice", 10_000)
    session = await admin.open_session("alice")
    await provider.post("/deposit", close_round("r1", [1_000], [0]))
    status, body = await provider.post(
        "/withdraw", bet("alice", session, "r1-operator-close-round", 1_000)
    )
    assert status == 409, body
    assert await admin.balance("alice") == 10_000


async def test_close_round_of_an_empty_round_is_ok(provider, services):
    status, body = await provider.post("/deposit", close_round("r1", [], []))
    assert status == 200, body
    [event] = await close_round_events(services, "r1")
    assert orjson.loads(event["stakes"]) == []


BAD_CLOSE_ROUNDS = {
    "unequal_lengths": close_round("r1", [1_000, 2_000], [0]),
    "unequal_lengths_as_strings": close_round("r1", "[1000]", "[0,2.35]"),
    "negative_stake": close_round("r1", [-1_000], [0]),
    "negative_coefficient": close_round("r1", [1_000], [-2.35]),
    "negative_coefficient_text": close_round("r1", [1_000], "[-1]"),
    "float_stake": close_round("r1", [1_000.0], [0]),
    "fractional_stake": close_round("r1", [10.5], [0]),
    "string_stake": close_round("r1", ["1000"], [0]),
    "boolean_stake": close_round("r1", [True], [0]),
    "boolean_coefficient": close_round("r1", [1_000], [True]),
    "non_numeric_coefficient": close_round("r1", [1_000], ["abc"]),
    "stakes_not_json": close_round("r1", "[1000", [0]),
    "stakes_not_array": close_round("r1", {"a": 1}, [0]),
    "amount_not_zero": close_round("r1", [1_000], [0], amount=1),
    "amount_missing": {k: v for k, v in close_round("r1", [1_000], [0]).items() if k != "amount"},
    "amount_float_zero": close_round("r1", [1_000], [0], amount=0.0),
    "attributes_missing": {
        k: v for k, v in close_round("r1", [1_000], [0]).items() if k != "attributes"
    },
    "stakes_attribute_missing": close_round("r1", [1_000], [0], attributes={COEFFICIENTS: [0]}),
    "attribute_list_item_without_name": close_round(
        "r1", [1_000], [0], attributes=[{"value": [0]}]
    ),
    "round_id_missing": {
        k: v for k, v in close_round("r1", [1_000], [0]).items() if k != "round_id"
    },
}


@pytest.mark.parametrize("case", sorted(BAD_CLOSE_ROUNDS))
async def test_malformed_close_round_is_400_and_records_nothing(provider, services, case):
    status, body = await provider.post("/deposit", BAD_CLOSE_ROUNDS[case])
    assert status == 400, body
    assert body["code"] == 400 and body["data"] is None
    assert await close_round_events(services, "r1") == []
    # nothing was stored under the key: the well-formed close still applies
    status, body = await provider.post("/deposit", close_round("r1", [1_000], [0]))
    assert status == 200, body
    assert len(await close_round_events(services, "r1")) == 1


async def test_close_round_keeps_native_coefficients_beyond_float_precision(provider, services):
    # 21 significant digits: a float would round it; the ledger must not
    payload = close_round("r-exact", [1000, 1000], [0, 0])
    raw = orjson.dumps(payload).replace(b"[0,0]", b"[1.00000000000000000001,2.350]")
    status, _ = await provider.post_raw("/deposit", raw)
    assert status == 200
    [event] = await close_round_events(services, "r-exact")
    assert orjson.loads(event["coefficients"]) == ["1.00000000000000000001", "2.350"]
