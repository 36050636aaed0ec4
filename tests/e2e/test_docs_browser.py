"""The services' pages render in a browser that cannot reach the internet.

Swagger UI used to load from a CDN, so behind a strict firewall (or
offline) `/docs` was a blank page. Each page here is opened under a host name
of its own (`offload.test`, resolved to 127.0.0.1 by Chromium, as a deployment
would have), and every request to any other host is refused and recorded: the
pages must render, and nothing may have tried to leave. A screenshot of the
gateway's `/docs` is saved as `var/test-artifacts/docs-offline.png`.
"""

from collections.abc import AsyncIterator
from urllib.parse import urlsplit

import pytest
from playwright.async_api import BrowserContext, Page, Route, expect

from tests.support.browser import ARTIFACTS, chromium
from tests.support.gateway import RunningGateway
from tests.support.infra import Infra
from tests.support.notifier import RunningNotifier, notifier_space, running_notifier
from tests.support.sandbox import RunningSandbox, running_sandbox

HOST = "offload.test"


class Offline:
    """A browser whose only reachable host is `offload.test`; it lists what it refused."""

    def __init__(self, context: BrowserContext) -> None:
        self.context = context
        self.refused: list[str] = []

    async def route(self, route: Route) -> None:
        if urlsplit(route.request.url).hostname == HOST:
            await route.continue_()
        else:
            self.refused.append(route.request.url)
            await route.abort("internetdisconnected")

    async def open(self, base_url: str, path: str) -> Page:
        port = urlsplit(base_url).port
        page = await self.context.new_page()
        page.set_default_timeout(15_000)
        await page.goto(f"http://{HOST}:{port}{path}")
        return page


@pytest.fixture
async def offline() -> AsyncIterator[Offline]:
    async with chromium(f"--host-resolver-rules=MAP {HOST} 127.0.0.1") as context:
        browser = Offline(context)
        await context.route("**/*", browser.route)
        yield browser


@pytest.fixture(scope="module")
async def notifier(infra: Infra) -> AsyncIterator[RunningNotifier]:
    async with notifier_space(infra) as space, running_notifier(space) as running:
        yield running


@pytest.fixture(scope="module")
async def sandbox() -> AsyncIterator[RunningSandbox]:
    async with running_sandbox() as running:
        yield running


async def expect_swagger_ui(page: Page, title: str, operation: str) -> None:
    await expect(page.locator(".swagger-ui .info .title")).to_contain_text(title)
    await expect(page.locator(".opblock-summary-description", has_text=operation)).to_be_visible()


async def test_the_api_docs_render_with_no_internet(
    offline: Offline,
    gateway: RunningGateway,
    notifier: RunningNotifier,
    sandbox: RunningSandbox,
) -> None:
    docs = await offline.open(gateway.base_url, "/docs")
    await expect_swagger_ui(docs, "Offload", "Submit a job")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    await docs.screenshot(path=str(ARTIFACTS / "docs-offline.png"), full_page=False)

    await expect_swagger_ui(
        await offline.open(notifier.base_url, "/docs"),
        "Offload notifier",
        "A job's events as Server-Sent Events",
    )
    await expect_swagger_ui(
        await offline.open(sandbox.base_url, "/docs"), "Offload sandbox providers", "Healthz"
    )
    assert offline.refused == []


async def test_the_dashboard_and_the_asyncapi_pages_load_nothing_from_outside(
    offline: Offline, gateway: RunningGateway
) -> None:
    dashboard = await offline.open(gateway.base_url, "/dashboard")
    await expect(dashboard.locator("#login")).to_be_visible()
    asyncapi = await offline.open(gateway.base_url, "/asyncapi")
    await expect(asyncapi.get_by_role("link", name="notifier")).to_be_visible()
    document = await offline.open(gateway.base_url, "/asyncapi/notifier")
    await expect(document.locator("body")).to_contain_text('"asyncapi"')
    assert offline.refused == []
