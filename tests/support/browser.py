"""Headless Chromium (Debian's) driven by Playwright, for the tests that look at pages.

Playwright's own browser download cannot work here (STACK-NOTES), so the
browser is `/usr/bin/chromium`, which `make browser` installs. Screenshots go to
`var/test-artifacts/`.
"""

import shutil
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from playwright.async_api import BrowserContext, async_playwright

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parents[2] / "var" / "test-artifacts"
# Without the background-networking flags Chromium's own connections to the
# outside are refused, many at a time (STACK-NOTES).
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@asynccontextmanager
async def chromium(*extra_args: str) -> AsyncIterator[BrowserContext]:
    """A fresh browser profile, closed and removed at the end."""
    if not CHROMIUM.exists():  # noqa: ASYNC240  (one stat, before any I/O)
        pytest.fail(
            "Chromium is not installed: run `make browser` (apt-get install -y chromium) "
            "or `make test`, which does it"
        )
    profile = Path(tempfile.mkdtemp(prefix="offload-chromium-"))
    try:
        async with async_playwright() as playwright:
            context = await playwright.chromium.launch_persistent_context(
                str(profile),
                executable_path=str(CHROMIUM),
                headless=True,
                args=[*CHROMIUM_ARGS, *extra_args],
                viewport={"width": 1400, "height": 1000},
            )
            try:
                yield context
            finally:
                await context.close()
    finally:
        shutil.rmtree(profile, ignore_errors=True)
