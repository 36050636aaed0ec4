"""Per-tenant webhook signing secrets (`whsec_…`, Standard Webhooks).

A tenant has one current secret, created on first use. Rotation makes a new
current secret and keeps the previous one signing for a grace period, so
receivers can switch over without missing a delivery (DESIGN §8).
"""

import base64
import hashlib
import hmac
import secrets
import time
from collections.abc import Sequence

import redis.asyncio as aioredis

from offload_runtime.keys import RedisKeys

PREFIX = "whsec_"

_CREATE_LUA = """
if redis.call('HEXISTS', KEYS[1], 'current') == 0 then
  redis.call('HSET', KEYS[1], 'current', ARGV[1])
end
return redis.call('HMGET', KEYS[1], 'current', 'previous', 'previous_until')
"""

_ROTATE_LUA = """
local current = redis.call('HGET', KEYS[1], 'current')
if current then
  redis.call('HSET', KEYS[1], 'previous', current, 'previous_until', ARGV[2])
end
redis.call('HSET', KEYS[1], 'current', ARGV[1])
return redis.call('HMGET', KEYS[1], 'current', 'previous', 'previous_until')
"""


def new_secret() -> str:
    return PREFIX + base64.b64encode(secrets.token_bytes(24)).decode()


def sign(secret: str, message_id: str, timestamp: int, body: bytes) -> str:
    """One `v1,<base64>` signature over `{id}.{timestamp}.{body}` (Standard Webhooks)."""
    key = base64.b64decode(secret.removeprefix(PREFIX))
    signed = f"{message_id}.{timestamp}.".encode() + body
    digest = hmac.new(key, signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def signature_header(secrets_: Sequence[str], message_id: str, timestamp: int, body: bytes) -> str:
    """The `webhook-signature` header: one signature per active secret, space-separated."""
    return " ".join(sign(secret, message_id, timestamp, body) for secret in secrets_)


class WebhookSecrets:
    """Reads, creates and rotates tenants' webhook secrets in Redis."""

    def __init__(
        self, client: "aioredis.Redis", keys: RedisKeys, *, rotation_grace_s: int = 24 * 3600
    ) -> None:
        self._client = client
        self._keys = keys
        self._grace_s = rotation_grace_s
        self._create = client.register_script(_CREATE_LUA)
        self._rotate = client.register_script(_ROTATE_LUA)

    async def current(self, tenant: str) -> str:
        """The tenant's current secret (created on first use)."""
        return (await self.signing(tenant))[0]

    async def signing(self, tenant: str) -> list[str]:
        """Secrets that sign now: the current one, and the previous during its grace period."""
        values = await self._create(keys=[self._keys.webhook_secrets(tenant)], args=[new_secret()])
        return _active(values)

    async def rotate(self, tenant: str) -> list[str]:
        """Make a new current secret; the old one keeps signing for the grace period."""
        until = int(time.time()) + self._grace_s
        values = await self._rotate(
            keys=[self._keys.webhook_secrets(tenant)], args=[new_secret(), until]
        )
        return _active(values)


def _active(values: list[str | None]) -> list[str]:
    current, previous, previous_until = values
    assert current is not None
    active = [current]
    if previous and previous_until and int(previous_until) > time.time():
        active.append(previous)
    return active
