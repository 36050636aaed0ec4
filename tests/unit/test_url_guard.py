"""The SSRF guard: what it refuses, and why it says so."""

import asyncio
import time

import httpx
import pytest

from offload_runtime import url_guard
from offload_runtime.url_guard import UnsafeURL, check_url, guarded_transport


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1/hook",
        "http://localhost:8000/",
        "http://[::1]/",
        "http://10.0.0.1/",
        "http://192.168.1.10/",
        "http://169.254.169.254/latest/meta-data/",
        "http://[::ffff:127.0.0.1]/",
        "http://[2002:7f00:1::1]/",  # 6to4 around 127.0.0.1
        "http://0.0.0.0/",
        "http://100.64.0.1/",
    ],
)
async def test_inside_addresses_are_refused_by_default(url: str) -> None:
    with pytest.raises(UnsafeURL, match="non-public address"):
        await check_url(url, allow_private=False)


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("file:///etc/passwd", "scheme"),
        ("gopher://example.com/", "scheme"),
        ("http://user:pass@127.0.0.1/", "credentials"),
        ("http:///nohost", "no host"),
        ("http://127.0.0.1:99999/", "port"),
        ("https://" + "a" * 70 + ".example/", "not a valid host name"),
        ("https://bad\u2028host.example/", "not a valid host name"),
    ],
)
async def test_malformed_urls_are_refused_with_the_reason(url: str, reason: str) -> None:
    with pytest.raises(UnsafeURL, match=reason):
        await check_url(url, allow_private=True)


async def test_loopback_is_allowed_when_configuration_says_so() -> None:
    assert await check_url("http://127.0.0.1:9/", allow_private=True) == ["127.0.0.1"]
    assert await check_url("http://10.0.0.1/", allow_private=True) == ["10.0.0.1"]
    assert await check_url("http://[fd12::1]/", allow_private=True) == ["fd12::1"]


@pytest.mark.parametrize(
    "url",
    [
        "http://169.254.169.254/latest/meta-data/",  # AWS, GCP, Azure, Oracle, DigitalOcean…
        "http://169.254.170.2/v2/credentials",  # ECS task credentials
        "http://[fe80::1]/",
        "http://[fd00:ec2::254]/latest/meta-data/",  # AWS over IPv6: a ULA, "private"
        "http://100.100.100.200/latest/meta-data/",  # Alibaba Cloud
        "http://[::ffff:169.254.169.254]/",
        "http://[2002:a9fe:a9fe::1]/",  # 6to4 around 169.254.169.254
        "http://[64:ff9b::a9fe:a9fe]/",  # NAT64 around 169.254.169.254
    ],
)
async def test_link_local_and_cloud_metadata_are_refused_even_when_private_is_allowed(
    url: str,
) -> None:
    for allow_private in (True, False):
        with pytest.raises(UnsafeURL, match=r"non-public address.*always refused"):
            await check_url(url, allow_private=allow_private)


@pytest.mark.parametrize("url", ["http://[64:ff9b::a00:1]/", "http://[64:ff9b:1::7f00:1]/"])
async def test_an_inside_address_behind_a_nat64_prefix_is_refused_by_default(url: str) -> None:
    with pytest.raises(UnsafeURL, match="non-public address"):
        await check_url(url, allow_private=False)


async def test_a_lookup_that_hangs_is_bounded_by_the_clients_connect_timeout(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def never_answers(host: str, port: int) -> list[str]:
        await asyncio.sleep(3600)
        raise AssertionError("unreachable")

    monkeypatch.setattr(url_guard, "_resolve", never_answers)
    timeout = httpx.Timeout(5, connect=0.2)
    transport = guarded_transport(allow_private=True)
    async with httpx.AsyncClient(transport=transport, timeout=timeout) as http:
        began = time.monotonic()
        with pytest.raises(httpx.ConnectTimeout):
            await http.get("http://slow-dns.example/")
    assert time.monotonic() - began < 2
