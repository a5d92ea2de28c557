"""The money scripts' KEYS and ARGV layouts are declared once (gateway/script_arguments.py); the
Lua headers name the same entries at the same places (`-- KEYS[n] name`, `-- ARGV[n] name`), and
the code reads no other."""

import inspect
import re
from importlib.resources import files

import pytest

from gateway.script_arguments import (
    BET_OWNER_ARGUMENT,
    MONEY_SCRIPT_LAYOUTS,
    Layout,
    money_common_arguments,
    money_common_keys,
)

ARRAYS = ("KEYS", "ARGV")


def lua_source(name: str) -> str:
    return (files("lua") / f"{name}.lua").read_text()


def header_entries(array: str, source: str) -> list[tuple[int, str]]:
    """`KEYS[n] name` or `ARGV[n] name` of the comment block that opens a script, in order."""
    header = []
    for line in source.splitlines():
        if not line.startswith("--"):
            break
        header += [
            (int(index), name) for index, name in re.findall(rf"{array}\[(\d+)\] (\w+)", line)
        ]
    return header


def entries_read(array: str, source: str) -> set[int]:
    """Every index of KEYS or ARGV the code (not its comments) reads."""
    code = "\n".join(line.split("--", 1)[0] for line in source.splitlines())
    read = {int(index) for index in re.findall(rf"{array}\[(\d+)\]", code)}
    for first, last in re.findall(rf"unpack\({array}, (\d+), (\d+)\)", code):
        read |= set(range(int(first), int(last) + 1))
    return read


def layout_names(layout: Layout) -> tuple[str, ...]:
    return tuple(inspect.signature(layout).parameters)


def declared_layout(array: str, script: str) -> list[tuple[int, str]]:
    own_keys, own_arguments = MONEY_SCRIPT_LAYOUTS[script]
    if array == "KEYS":
        names = (*layout_names(money_common_keys), *layout_names(own_keys))
    else:
        names = (*layout_names(money_common_arguments), *layout_names(own_arguments))
    return list(enumerate(names, start=1))


def mismatches(script: str, common_source: str, script_source: str) -> list[str]:
    """What the Lua sources say about KEYS and ARGV that the Python declaration does not."""
    problems = []
    for array in ARRAYS:
        declared = declared_layout(array, script)
        headers = header_entries(array, common_source) + header_entries(array, script_source)
        if headers != declared:
            problems.append(f"{script}: {array} headers {headers} != declared {declared}")
        read = entries_read(array, common_source + "\n" + script_source)
        declared_indexes = {index for index, _ in declared}
        if read - declared_indexes:
            problems.append(f"{script}: reads undeclared {array} {sorted(read - declared_indexes)}")
        if declared_indexes - read:
            problems.append(f"{script}: never reads {array} {sorted(declared_indexes - read)}")
    return problems


@pytest.mark.parametrize("script", sorted(MONEY_SCRIPT_LAYOUTS))
def test_lua_headers_and_reads_match_declared_layout(script):
    assert mismatches(script, lua_source("money_common"), lua_source(script)) == []


def test_a_header_that_disagrees_with_the_declaration_is_caught():
    swapped = lua_source("withdraw").replace(
        "ARGV[17] default_maxbet_millis", "ARGV[17] session_ttl_ms", 1
    )
    assert mismatches("withdraw", lua_source("money_common"), swapped)


def test_an_undeclared_read_is_caught():
    reads_more = lua_source("close_round") + "\nlocal stray = ARGV[18]\nlocal key = KEYS[6]\n"
    assert len(mismatches("close_round", lua_source("money_common"), reads_more)) == 2


LAYOUTS = sorted(
    {
        money_common_keys,
        money_common_arguments,
        *(f for pair in MONEY_SCRIPT_LAYOUTS.values() for f in pair),
    },
    key=lambda layout: layout.__name__,
)


@pytest.mark.parametrize("layout", LAYOUTS, ids=lambda layout: layout.__name__)
def test_each_layout_returns_its_parameters_in_order(layout):
    names = layout_names(layout)
    assert layout(**{name: name for name in names}) == names


@pytest.mark.parametrize("script", ["credit", "rollback"])
def test_the_bet_owner_is_where_the_one_script_call_puts_it(script: str) -> None:
    """lua/claim_and_decide.lua writes the claimed bet's owner at BET_OWNER_ARGUMENT of the
    money ARGV; the settling scripts' declared layout (held to their Lua above) reads it there."""
    assert (BET_OWNER_ARGUMENT, "bet_owner") in declared_layout("ARGV", script)
