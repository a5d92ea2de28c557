"""The seen-id filter: idempotency without expiry, with PostgreSQL off the path of new calls.

An idempotency record lives RECORD_RETENTION_SECONDS in Redis; the history keeps every call for
ever. Every tx id a money script stores is also set in a Bloom filter (one bitmap per shard,
`w:{shard}:seen`, written by the scripts). A script that finds no record asks the filter: a
clear bit proves the id new (the ordinary call: no PostgreSQL); all bits set means "seen, or a
false positive": the script answers LOOKUP_HISTORY, the gateway brings back from the history
what it holds of the id (persistence/records.py) and calls again, and the retry is decided as
within retention.

FILTER_HASHES bits per id at Kirsch-Mitzenmacher offsets h1 + i*h2 of one blake2b digest. With
m bits per shard and n ids in it, false positives run at (1 - e^(-7n/m))^7: 1% at m/n = 9.6,
0.01% at m/n = 19. A false positive costs one PostgreSQL lookup, never a wrong answer, so a
filter that fills up gets slower, not wrong.
"""

import hashlib

FILTER_HASHES = 7
FILTER_BITS_MAX = 2**32  # a Redis string holds at most 512 MB


def filter_offsets(tx_id: str, filter_bits: int) -> str:
    """The id's bit offsets, space-separated, as lua/money_common.lua reads them."""
    digest = hashlib.blake2b(tx_id.encode(), digest_size=16).digest()
    first = int.from_bytes(digest[:8], "little")
    step = int.from_bytes(digest[8:], "little") | 1  # odd: the offsets never collapse to one
    return " ".join(str((first + i * step) % filter_bits) for i in range(FILTER_HASHES))
