"""The outbox stream through the `notifier` consumer group (the relay's `Outbox` port)."""

from collections.abc import Sequence
from typing import Any

import redis.asyncio as aioredis

from offload_notifier.relay import OutboxEntry
from offload_runtime.logging import get_logger
from offload_runtime.stream_ids import stream_id

GROUP = "notifier"
"""The consumer group every notifier replica reads the outbox through (DESIGN §4)."""

FORGET_CONSUMER_IDLE_MS = 3_600_000
"""A consumer idle this long with nothing pending belonged to a notifier that is gone."""

log = get_logger("offload.notifier.outbox")


def _entries(reply: Any) -> list[OutboxEntry]:
    found: list[OutboxEntry] = []
    for _key, entries in reply or ():
        found.extend(_entry(entry_id, fields) for entry_id, fields in entries)
    return found


def _entry(entry_id: str, fields: dict[str, str] | None) -> OutboxEntry:
    fields = fields or {}
    return OutboxEntry(entry_id, fields.get("data", ""), fields.get("webhook") or None)


def _successor(entry_id: str) -> str:
    ms, seq = stream_id(entry_id)
    return f"{ms}-{seq + 1}"


class RedisOutbox:
    """Reads, claims, acknowledges and trims the outbox for one consumer of the group."""

    def __init__(
        self,
        client: "aioredis.Redis",
        key: str,
        *,
        consumer: str,
        batch: int,
        block_ms: int,
        claim_idle_ms: int,
    ) -> None:
        self._client = client
        self._key = key
        self._consumer = consumer
        self._batch = batch
        self._block_ms = block_ms
        self._claim_idle_ms = claim_idle_ms
        self._claim_cursor = "0-0"

    async def ensure_group(self) -> None:
        """Create the group at the stream's start (and the stream) unless it exists."""
        try:
            await self._client.xgroup_create(self._key, GROUP, id="0", mkstream=True)
        except aioredis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def read_new(self) -> list[OutboxEntry]:
        reply = await self._read_group(">", block=self._block_ms)
        return _entries(reply)

    async def read_own_pending(self) -> list[OutboxEntry]:
        reply = await self._read_group("0", block=None)
        # An entry trimmed while pending comes back without fields: nothing left to relay.
        gone = [entry.id for entry in _entries(reply) if not entry.data]
        if gone:
            await self.ack(gone)
        return [entry for entry in _entries(reply) if entry.data]

    async def _read_group(self, position: str, *, block: int | None) -> Any:
        try:
            return await self._client.xreadgroup(
                GROUP, self._consumer, {self._key: position}, count=self._batch, block=block
            )
        except aioredis.ResponseError as exc:
            if "NOGROUP" not in str(exc):
                raise
            # The stream and its group are gone (a Redis restarted without persistence):
            # start over with an empty outbox rather than failing forever.
            log.warning("outbox consumer group missing; creating it again")
            await self.ensure_group()
            return []

    async def claim_stale(self) -> list[OutboxEntry]:
        # XAUTOCLAIM walks the pending list with a cursor; one page per call keeps
        # each batch bounded, and the cursor wraps to 0-0 when the walk is done.
        cursor, claimed, _deleted = await self._client.xautoclaim(
            self._key,
            GROUP,
            self._consumer,
            min_idle_time=self._claim_idle_ms,
            start_id=self._claim_cursor,
            count=self._batch,
        )
        self._claim_cursor = cursor
        return [_entry(entry_id, fields) for entry_id, fields in claimed if fields]

    async def ack(self, ids: Sequence[str]) -> None:
        if ids:
            await self._client.xack(self._key, GROUP, *ids)

    async def trim_acknowledged(self) -> int:
        """Delete entries older than anything a consumer group still needs.

        Per group, that is its oldest pending entry, or (nothing pending) the
        entry after its last-delivered one: everything before was acknowledged.
        """
        try:
            groups: list[dict[str, Any]] = await self._client.xinfo_groups(self._key)
        except aioredis.ResponseError:
            return 0  # no stream yet
        keep: list[tuple[int, int]] = []
        for group in groups:
            if int(group.get("pending", 0)):
                summary = await self._client.xpending(self._key, group["name"])
                keep.append(stream_id(summary["min"]))
            else:
                keep.append(stream_id(_successor(group["last-delivered-id"])))
        if not keep:
            return 0  # without a group nothing is known to be relayed: keep everything
        ms, seq = min(keep)
        trimmed = int(await self._client.xtrim(self._key, minid=f"{ms}-{seq}", approximate=False))
        if trimmed:
            log.debug("outbox trimmed", entries=trimmed)
        await self.forget_idle_consumers(FORGET_CONSUMER_IDLE_MS)
        return trimmed

    async def forget_idle_consumers(self, idle_ms: int) -> None:
        """Remove consumers of dead notifiers once they hold nothing (names are per process)."""
        for consumer in await self._client.xinfo_consumers(self._key, GROUP):
            if not int(consumer["pending"]) and int(consumer["idle"]) > idle_ms:
                await self._client.xgroup_delconsumer(self._key, GROUP, consumer["name"])
