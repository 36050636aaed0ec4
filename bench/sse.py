"""A minimal Server-Sent Events reader over aiohttp, for the benchmarks' clients."""

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp


@dataclass(frozen=True)
class SseEvent:
    event: str
    data: str
    id: str

    def json(self) -> Any:
        return json.loads(self.data)


async def sse_events(response: aiohttp.ClientResponse) -> AsyncIterator[SseEvent]:
    """The events of an open `text/event-stream` response, comments and pings skipped."""
    event, event_id = "message", ""
    data: list[str] = []
    async for raw in response.content:
        line = raw.decode().rstrip("\r\n")
        if not line:
            if data:
                yield SseEvent(event, "\n".join(data), event_id)
            event, data = "message", []
            continue
        if line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "data":
            data.append(value)
        elif name == "event":
            event = value
        elif name == "id":
            event_id = value
