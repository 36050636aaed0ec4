"""SSRF guard for URLs Offload fetches or calls on a user's behalf (webhooks, image sources).

The host is resolved and every address it resolves to must be public: no
loopback, private, link-local (cloud metadata lives at 169.254.169.254),
multicast, reserved or unspecified address, unless configuration allows
private targets (tests and `make run` allow loopback). Callers must also
refuse redirects, or check each hop with this guard again.
"""

import asyncio
import ipaddress
import socket
from urllib.parse import urlsplit


class UnsafeURL(ValueError):
    """The URL is malformed or points at an address Offload will not call."""


def _is_private(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        address = address.ipv4_mapped
    # 6to4 (2002::/16) counts as global, yet carries an IPv4 destination in its
    # address (2002:7f00:1:: is 127.0.0.1): judge it by that address too.
    if (
        isinstance(address, ipaddress.IPv6Address)
        and address.sixtofour is not None
        and _is_private(address.sixtofour)
    ):
        return True
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
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(
            parts.hostname, port, type=socket.SOCK_STREAM
        )
    except socket.gaierror as exc:
        raise UnsafeURL(f"host {parts.hostname!r} does not resolve") from exc
    except UnicodeError as exc:  # a label too long, or a character IDNA cannot encode
        raise UnsafeURL(f"host {parts.hostname!r} is not a valid host name") from exc
    addresses = sorted({str(info[4][0]) for info in infos})
    if not allow_private:
        for text in addresses:
            if _is_private(ipaddress.ip_address(text.split("%", 1)[0])):
                raise UnsafeURL(
                    f"host {parts.hostname!r} resolves to a non-public address ({text}); "
                    "private, loopback and link-local targets are refused"
                )
    return addresses
