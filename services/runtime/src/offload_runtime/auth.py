"""API keys → tenants (DESIGN §2, §8), shared by the gateway and the notifier.

`OFFLOAD_API_KEYS` is `key=tenant` pairs, comma-separated; `OFFLOAD_ADMIN_KEYS`
is a comma-separated list. Keys are compared in constant time.
"""

import hmac
from dataclasses import dataclass


def parse_api_keys(text: str) -> dict[str, str]:
    """`"k1=acme, k2=globex"` → `{"k1": "acme", "k2": "globex"}`; refuses malformed pairs."""
    keys: dict[str, str] = {}
    for pair in text.split(","):
        pair = pair.strip()
        if not pair:
            continue
        key, sep, tenant = pair.partition("=")
        key, tenant = key.strip(), tenant.strip()
        if not sep or not key or not tenant:
            raise ValueError("OFFLOAD_API_KEYS must be comma-separated key=tenant pairs")
        keys[key] = tenant
    return keys


def parse_admin_keys(text: str) -> frozenset[str]:
    return frozenset(key.strip() for key in text.split(",") if key.strip())


@dataclass(frozen=True)
class KeyRing:
    """Who a bearer token is: a tenant, an admin, or nobody."""

    tenants_by_key: dict[str, str]
    admin_keys: frozenset[str]

    def tenant_for(self, token: str) -> str | None:
        found = None
        for key, tenant in self.tenants_by_key.items():
            if hmac.compare_digest(key.encode(), token.encode()):
                found = tenant
        return found

    def is_admin(self, token: str) -> bool:
        found = False
        for key in self.admin_keys:
            if hmac.compare_digest(key.encode(), token.encode()):
                found = True
        return found


def bearer_token(authorization: str | None) -> str | None:
    """The token of an `Authorization: Bearer <token>` header, else None."""
    if not authorization:
        return None
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()
