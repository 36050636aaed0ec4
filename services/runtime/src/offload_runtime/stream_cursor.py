"""A position in several shard streams at once: the resume id of a merged stream.

A tenant's events (and the admin's view of every event) live in one stream
per shard. A client that follows them all receives entries of different
shards interleaved in the order they arrived, which no single stream id can
describe: an entry of a slow shard may come after a later entry of another.
So the id a merged stream gives each entry is the whole vector of how far
the client has read in every shard, and resuming from it reads each shard
strictly after its own position: no gap, no duplicate.

Written as `<shard>.<ms>-<seq>` items joined by `_`, shards in order, a shard
at the start of its stream (`0-0`) left out; `0` when every shard is at its
start. For example `3.1733390000000-0_11.1733390000123-2`.
"""

from offload_runtime.stream_ids import stream_id

START = "0-0"
ALL_AT_START = "0"
MAX_CHARS = 16 * 1024
"""Longest cursor read: above what the most shards allowed (256) give, about 6,000
characters at most; 16 shards give about 450."""


def encode(positions: dict[int, str]) -> str:
    items = [
        f"{shard}.{position}"
        for shard, position in sorted(positions.items())
        if stream_id(position) != (0, 0)
    ]
    return "_".join(items) or ALL_AT_START


def decode(text: str, shards: int) -> dict[int, str]:
    """Every shard's position (`0-0` for those not named). ValueError for anything else than a
    cursor of `shards` shards written by `encode`."""
    text = text.strip()
    if len(text) > MAX_CHARS:
        raise ValueError("cursor too long")
    positions = dict.fromkeys(range(shards), START)
    if text == ALL_AT_START:
        return positions
    for item in text.split("_"):
        shard_text, sep, position = item.partition(".")
        if not sep or not shard_text.isascii() or not shard_text.isdigit():
            raise ValueError(f"not a shard position: {item[:40]!r}")
        shard = int(shard_text)
        if shard >= shards:
            raise ValueError(f"no shard {shard} in a deployment of {shards} shards")
        ms, seq = stream_id(position)
        positions[shard] = f"{ms}-{seq}"
    return positions
