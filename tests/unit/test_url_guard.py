"""The SSRF guard: what it refuses, and why it says so."""

import pytest

from offload_runtime.url_guard import UnsafeURL, check_url


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
