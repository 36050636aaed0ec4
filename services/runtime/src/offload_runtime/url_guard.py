"""SSRF guard for URLs Offload fetches or calls on a user's behalf (webhooks, image sources).

The host is resolved and every address it resolves to must be public: no
loopback, private, link-local (cloud metadata lives at 169.254.169.254),
multicast, reserved or unspecified address. Configuration may allow private
targets (`OFFLOAD_WEBHOOK_ALLOW_PRIVATE`: tests and `make run` do, for loopback),
but never link-local ones nor the cloud metadata addresses kept elsewhere
(`fd00:ec2::254`, `100.100.100.200`): those answer with the machine's
credentials, which no development set-up needs a webhook to reach. An IPv4
address inside an IPv6 one (IPv4-mapped, 6to4, NAT64) is judged as well.
Callers must also refuse redirects, or check each hop with this guard again.

`check_url` gives a clear error before a request. The HTTP client then resolves
the host again when it connects, and a DNS answer that changes in between (DNS
rebinding) would slip past it; so clients that call user-given URLs also use
`guarded_transport`, which checks the very address it connects to.
"""

import asyncio
import ipaddress
import socket
import ssl
from collections.abc import Iterable
from urllib.parse import urlsplit

import httpcore
import httpx


class UnsafeURL(ValueError):
    """The URL is malformed or points at an address Offload will not call."""


Address = ipaddress.IPv4Address | ipaddress.IPv6Address

_METADATA = frozenset(
    {
        ipaddress.ip_address("fd00:ec2::254"),  # AWS's instance metadata over IPv6 (a ULA)
        ipaddress.ip_address("100.100.100.200"),  # Alibaba Cloud's (shared address space)
    }
)
# NAT64 prefixes (RFC 6052 well-known, RFC 8215 local-use): on an IPv6-only network
# with a NAT64 gateway, 64:ff9b::a00:1 reaches 10.0.0.1; Python counts them global.
_NAT64 = (ipaddress.ip_network("64:ff9b::/96"), ipaddress.ip_network("64:ff9b:1::/48"))


def _judged(address: Address) -> list[Address]:
    """The addresses to judge: the IPv4 address an IPv6 one carries leads there too."""
    if isinstance(address, ipaddress.IPv4Address):
        return [address]
    if address.ipv4_mapped is not None:
        return [address.ipv4_mapped]  # the IPv4 address itself, on the wire
    # 6to4 (2002::/16) counts as global, yet carries an IPv4 destination in its
    # address (2002:7f00:1:: is 127.0.0.1).
    if address.sixtofour is not None:
        return [address, address.sixtofour]
    if any(address in prefix for prefix in _NAT64):
        return [address, ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)]
    return [address]


def _is_metadata(address: Address) -> bool:
    """Link-local or a cloud metadata address: refused whatever the configuration says."""
    return any(a.is_link_local or a in _METADATA for a in _judged(address))


def _is_private(address: Address) -> bool:
    return any(_is_inside(a) for a in _judged(address))


def _is_inside(address: Address) -> bool:
    return (
        address.is_private
        or address.is_loopback
        or address.is_link_local
        or address.is_multicast
        or address.is_reserved
        or address.is_unspecified
        or not address.is_global
    )


async def check_url(
    url: str, *, allow_private: bool, schemes: tuple[str, ...] = ("http", "https")
) -> list[str]:
    """Validate `url` and return the addresses its host resolves to.

    Raises `UnsafeURL` with a reason a user can act on.
    """
    parts = urlsplit(url)
    if parts.scheme not in schemes:
        raise UnsafeURL(f"URL scheme must be one of {', '.join(schemes)}")
    if not parts.hostname:
        raise UnsafeURL("URL has no host")
    if parts.username or parts.password:
        raise UnsafeURL("URL must not carry credentials")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError as exc:
        raise UnsafeURL(f"URL port is invalid: {exc}") from exc
    addresses = await _resolve(parts.hostname, port)
    _refuse_inside(parts.hostname, addresses, allow_private=allow_private)
    return addresses


async def _resolve(host: str, port: int) -> list[str]:
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise UnsafeURL(f"host {host!r} does not resolve") from exc
    except UnicodeError as exc:  # a label too long, or a character IDNA cannot encode
        raise UnsafeURL(f"host {host!r} is not a valid host name") from exc
    # In the resolver's order (its preference), without repeats.
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def _refuse_inside(host: str, addresses: Iterable[str], *, allow_private: bool) -> None:
    for text in addresses:
        address = ipaddress.ip_address(text.split("%", 1)[0])
        if _is_metadata(address):
            raise UnsafeURL(
                f"host {host!r} resolves to a non-public address ({text}); link-local and "
                "cloud metadata targets are always refused"
            )
        if not allow_private and _is_private(address):
            raise UnsafeURL(
                f"host {host!r} resolves to a non-public address ({text}); "
                "private, loopback and link-local targets are refused"
            )


class GuardedNetworkBackend(httpcore.AsyncNetworkBackend):
    """Resolves the host itself, refuses non-public addresses, connects to what it checked.

    Every address the host resolves to must pass (as in `check_url`), then the
    connection goes to one of those addresses, never to a fresh lookup. TLS
    still verifies the certificate against the URL's host name: httpcore takes
    that from the request, not from the address connected to.
    """

    def __init__(
        self, *, allow_private: bool, inner: httpcore.AsyncNetworkBackend | None = None
    ) -> None:
        self._allow_private = allow_private
        self._inner = inner or httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        try:
            # The client's connect timeout covers the lookup too, as httpcore's own does.
            async with asyncio.timeout(timeout):
                addresses = await _resolve(host, port)
        except TimeoutError as exc:
            raise httpcore.ConnectTimeout(f"resolving {host!r} took over {timeout}s") from exc
        _refuse_inside(host, addresses, allow_private=self._allow_private)
        failure: Exception | None = None
        for address in addresses:
            try:
                return await self._inner.connect_tcp(
                    address,
                    port,
                    timeout=timeout,
                    local_address=local_address,
                    socket_options=socket_options,
                )
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                failure = exc
        assert failure is not None  # getaddrinfo answers at least one address or raises
        raise failure

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        raise UnsafeURL("unix sockets are refused")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


def guarded_transport(
    *,
    allow_private: bool,
    limits: httpx.Limits | None = None,
    verify: ssl.SSLContext | bool = True,
) -> httpx.AsyncHTTPTransport:
    """An httpx transport whose every connection goes through `GuardedNetworkBackend`.

    A refused address raises `UnsafeURL` from the request. No proxy or
    certificate settings are taken from the environment; `verify` is as in httpx.
    """
    limits = limits or httpx.Limits()
    transport = httpx.AsyncHTTPTransport(limits=limits, trust_env=False)
    # httpx 0.28 takes no network backend (encode/httpx#3749 adds it), so the
    # pool it built is replaced by one with the same settings and our backend.
    transport._pool = httpcore.AsyncConnectionPool(
        ssl_context=httpx.create_ssl_context(verify=verify, trust_env=False),
        max_connections=limits.max_connections,
        max_keepalive_connections=limits.max_keepalive_connections,
        keepalive_expiry=limits.keepalive_expiry,
        network_backend=GuardedNetworkBackend(allow_private=allow_private),
    )
    return transport
