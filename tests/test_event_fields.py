"""The stream events' field names are declared once (persistence/events.py); the Lua scripts
XADD exactly those, per kind, in that order."""

import re
from importlib.resources import files
from typing import Any

import pytest

from gateway.scripts import MONEY_SCRIPTS, PLAIN_SCRIPTS
from persistence.events import (
    EVENT_KINDS,
    RECORD_EXTRAS,
    TX_KIND,
    TxEvent,
    TxEventExtras,
    TxRecord,
)
from persistence.records import idempotency_record

XADD_CALL = re.compile(r"redis\.call\('XADD', KEYS\[\d+\], '\*', ([^)]*)\)")
EVENT_TABLE = re.compile(r"local event = \{([^}]*)\}")
# finish(outcome, balance, currency, delta, extra[, event_extra])
FINISH_EXTRAS = re.compile(
    r"finish(?:_applied)?\([^,]+, [^,]+, [^,]+, [^,]+, (\{[^}]*\}|\w+)(?:, (\{[^}]*\}))?[,)]"
)


def lua_source(name: str) -> str:
    return (files("lua") / f"{name}.lua").read_text()


def field_names(arguments: str) -> tuple[str, ...]:
    """The names of a Lua list of name, value, name, value, ... (names are literals)."""
    items = [item.strip() for item in arguments.replace("\n", " ").split(",") if item.strip()]
    names = items[::2]
    assert all(re.fullmatch(r"'\w+'", name) for name in names), names
    return tuple(name.strip("'") for name in names)


def xadd_events(source: str) -> list[tuple[str, tuple[str, ...]]]:
    """(kind, field names) of each XADD with literal fields."""
    events = []
    for arguments in XADD_CALL.findall(source):
        items = [item.strip() for item in arguments.replace("\n", " ").split(",")]
        kind = items[items.index("'kind'") + 1].strip("'")
        events.append((kind, field_names(arguments)))
    return events


def extra_tx_fields(source: str) -> set[str]:
    """Names the finish() calls of a script add: literal tables, or the tables assigned to the
    variable they pass."""
    extras: set[str] = set()
    for tables in FINISH_EXTRAS.findall(source):
        for table in tables:
            if table.startswith("{"):
                extras |= set(field_names(table[1:-1]))
            elif table:
                assigned = re.findall(rf"\b{table}\b[^=\n]*=[^{{\n]*\{{([^}}]*)\}}", source)
                for fields in assigned:
                    extras |= set(field_names(fields))
    return extras


def test_finish_writes_every_tx_event_field_in_order():
    (event_table,) = EVENT_TABLE.findall(lua_source("money_common"))
    assert field_names(event_table) == TxEvent._fields
    assert "'kind', 'tx'," in event_table


def test_money_scripts_add_exactly_the_declared_extras():
    extras = set()
    for script in ("money_common", *MONEY_SCRIPTS):
        extras |= extra_tx_fields(lua_source(script))
    assert extras == set(TxEventExtras._fields)


def test_other_events_xadd_exactly_their_declared_fields():
    seen = set()
    for script in (*MONEY_SCRIPTS, *PLAIN_SCRIPTS):
        for kind, names in xadd_events(lua_source(script)):
            assert names == EVENT_KINDS[kind]._fields, (script, kind)
            seen.add(kind)
    assert seen == set(EVENT_KINDS) - {TX_KIND}


def test_a_field_the_declaration_lacks_is_caught():
    source = lua_source("open_session").replace("'source', ARGV[5]", "'origin', ARGV[5]")
    ((kind, names),) = xadd_events(source)
    assert names != EVENT_KINDS[kind]._fields


RECORD_TABLE = re.compile(r"local record = \{([^}]*)\}")


def test_finish_keeps_the_declared_record_fields_in_order():
    (record_table,) = RECORD_TABLE.findall(lua_source("money_common"))
    assert field_names(record_table) == TxRecord._fields


@pytest.mark.parametrize(
    "row",
    [
        {"action": "BET", "amount": 1_000, "bet_state": "won", "early_win": False},
        {"action": "ROLL_BACK", "amount": None, "tombstone": True},
        {"action": "WIN", "amount": 5, "incident": "DOUBLE_WIN", "early_win": True},
        {"action": "CLOSE_ROUND", "amount": 0, "stakes": [1], "coefficients": ["2.5"]},
    ],
)
def test_the_history_rebuilds_a_record_of_the_declared_fields(row: dict[str, Any]) -> None:
    """Restore and the bring-back of an expired record write what finish() would have."""
    full_row = {
        "fingerprint": "f", "outcome": "OK", "balance_after": 1, "operator_tx_id": "op",
        "currency": "USD", "incident": None, "tombstone": False, "early_win": False,
        "stakes": None, "coefficients": None, "bet_state": None, **row,
    }  # fmt: skip
    record = idempotency_record(full_row)
    assert tuple(record)[: len(TxRecord._fields)] == TxRecord._fields
    assert set(record) - set(TxRecord._fields) <= set(RECORD_EXTRAS)
    assert set(record) > set(TxRecord._fields)  # each row above has an extra
