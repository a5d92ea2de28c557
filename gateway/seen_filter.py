"""The seen-id filter: idempotency without expiry, with PostgreSQL off the path of new calls.

An idempotency record lives RECORD_RETENTION_SECONDS in Redis; the history keeps every call for
ever. Every tx id a money script stores is also set in a Bloom filter (one bitmap per shard,
`w:{shard}:seen`, written by the scripts). A script that finds no record asks the filter: a
clear bit proves the id new (the ordinary call: no PostgreSQL); all bits set means "seen, or a
false positive": the script answers LOOKUP_HISTORY, the gateway brings back from the history
what it holds of the id (persistence/records.py) and calls again, and the retry is decided as
within retention.

FILTER_HASHES bits per id at Kirsch-Mitzenmacher offsets h1 + i*h2 of one blake2b digest. With
m bits per shard and n ids in it, false positives run at (1 - e^(-4n/m))^4: 1.2% at m/n = 10,
0.1% at m/n = 20 (seven bits would give 0.8% at 10, for nearly twice the filter's Redis work
per call: its BITFIELD of four bits takes about 1.2 us of a claim's 13.5 us, `python -m
loadtests.seen_filter_cost`). A
false positive costs one PostgreSQL lookup, never a wrong answer, so a filter that fills up
gets slower, not wrong.
"""

import hashlib

FILTER_HASHES = 4  # lua/money_common.lua reads exactly four offsets
FILTER_BITS_MAX = 2**32  # a Redis string holds at most 512 MB


def filter_offsets(tx_id: str, filter_bits: int) -> str:
    """The id's FILTER_HASHES bit offsets, "a b c d": the one script argument
    lua/money_common.lua reads them from (an argument each cost the gateway more to pack)."""
    digest = int.from_bytes(hashlib.blake2b(tx_id.encode(), digest_size=16).digest(), "little")
    first = digest & 0xFFFFFFFFFFFFFFFF
    step = digest >> 64 | 1  # odd: the offsets never collapse to one
    return (
        f"{first % filter_bits} {(first + step) % filter_bits} "
        f"{(first + 2 * step) % filter_bits} {(first + 3 * step) % filter_bits}"
    )
