"""The dashboard in a real browser: headless Chromium (Debian's) driven by Playwright.

An operator opens `/dashboard`, types the admin key, watches a submitted job
reach `completed` live (over SSE, no reload), sees a failed job land in the
dead letters with its reason, fixes the cause and presses Replay, and watches
the job complete. The run saves screenshots: `var/test-artifacts/dashboard-dead-letter.png`
(a failed job parked, with its timeline) and `var/test-artifacts/dashboard.png` (after the
replay).

`make test` installs Chromium first (`make browser`: `apt-get install -y
chromium` when /usr/bin/chromium is missing and we are root).
"""

from collections.abc import AsyncIterator
from typing import Any

import pytest
from playwright.async_api import BrowserContext, Page, expect

from offload_contracts import topology
from offload_runtime.worker import Worker
from tests.support.browser import ARTIFACTS, chromium
from tests.support.gateway import RunningGateway
from tests.support.infra import Infra
from tests.support.notifier import (
    Receiver,
    RunningNotifier,
    free_port,
    serve,
)
from tests.support.ops import ADMIN_KEY, StubAi, admin_client, deployed_notifier
from tests.support.waiting import wait_until


@pytest.fixture(scope="module")
def gateway_infra(ops_infra: Infra) -> Infra:
    return ops_infra


@pytest.fixture(scope="module")
async def stub() -> StubAi:
    # Slow enough to be seen running, fast enough for a quick test.
    return StubAi(delay_s=0.4)


@pytest.fixture(scope="module")
async def worker(ops_infra: Infra, gateway: RunningGateway, stub: StubAi) -> AsyncIterator[Worker]:
    running = await stub.start(ops_infra, gateway.settings.redis_prefix)
    yield running
    await running.app.stop()


@pytest.fixture(scope="module")
async def notifier(ops_infra: Infra, gateway: RunningGateway) -> AsyncIterator[RunningNotifier]:
    """The deployed notifier's queue names, reading the gateway's outbox; two attempts."""
    async with deployed_notifier(
        ops_infra, gateway, retry_tiers="50ms", webhook_max_attempts=2
    ) as running:
        yield running


@pytest.fixture
async def browser() -> AsyncIterator[BrowserContext]:
    async with chromium() as context:
        yield context


async def open_dashboard(browser: BrowserContext, gateway: RunningGateway) -> Page:
    page = await browser.new_page()
    page.set_default_timeout(15_000)
    await page.goto(f"{gateway.base_url}/dashboard")
    await expect(page.locator("#login")).to_be_visible()
    await page.fill("#admin-key", ADMIN_KEY)
    await page.click("#login-form button[type=submit]")
    await expect(page.locator('#queues tr[data-queue="ai.jobs"]')).to_be_visible()
    await expect(page.locator("#live")).to_have_text("live")
    return page


async def test_an_operator_watches_a_job_live_and_replays_a_dead_letter(
    browser: BrowserContext, gateway: RunningGateway, worker: Worker, stub: StubAi
) -> None:
    page = await open_dashboard(browser, gateway)
    cells = page.locator('#queues tr[data-queue="ai.jobs"] td')
    await expect(cells.nth(4)).to_have_text("1")  # consumers: the worker, by passive declare
    await expect(cells.nth(3)).to_have_text("0")  # unacked: the idle worker's report

    # A job submitted elsewhere appears and completes on the page, without a reload.
    job_id = await gateway.submit("ai.generate", {"prompt": "browser: hello"})
    row = page.locator(f'#jobs tr[data-job="{job_id}"]')
    await expect(row.locator("[data-status]")).to_have_attribute("data-status", "active")
    await expect(row.locator("[data-status]")).to_have_attribute(
        "data-status", "completed", timeout=15_000
    )
    await expect(page.locator('#counts [data-status="completed"] b')).not_to_have_text("0")

    # A job that fails for good shows up in the dead letters, with why.
    stub.failing.add("browser: fail me")
    failed_id = await gateway.submit("ai.generate", {"prompt": "browser: fail me"})
    await expect(page.locator(f'#jobs tr[data-job="{failed_id}"] [data-status]')).to_have_attribute(
        "data-status", "failed"
    )
    letter = page.locator(f'#dead tr[data-job="{failed_id}"]')
    await expect(letter).to_contain_text("refused the prompt 'browser: fail me'")
    await expect(page.locator('#queues tr[data-queue="ai.dead"] td').nth(2)).to_have_text("1")

    # Its timeline says the same.
    await page.locator(f'#jobs tr[data-job="{failed_id}"]').click()
    await expect(page.locator('#timeline li[data-event="failed"]')).to_contain_text("refused")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    await page.screenshot(path=str(ARTIFACTS / "dashboard-dead-letter.png"), full_page=True)

    # The cause is fixed; the operator replays it and watches it complete.
    stub.failing.discard("browser: fail me")
    await letter.locator("button.replay").click()
    await expect(page.locator("#dead-status")).to_contain_text("Replayed 1")
    await expect(letter).to_have_count(0)
    await expect(page.locator(f'#jobs tr[data-job="{failed_id}"] [data-status]')).to_have_attribute(
        "data-status", "completed", timeout=15_000
    )
    await expect(page.locator('#timeline li[data-event="completed"]')).to_have_count(1)
    await expect(page.locator("#audit li").first).to_contain_text("replayed 1 from ai.dead")

    shot = ARTIFACTS / "dashboard.png"
    await page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000
    await page.close()  # ends the page's live stream now, not at the gateway's shutdown


async def test_an_operator_replays_a_webhook_delivery_from_notifier_dead(
    browser: BrowserContext, gateway: RunningGateway, worker: Worker, notifier: RunningNotifier
) -> None:
    dead = topology.dead_queue(topology.NOTIFIER_SERVICE)
    port = free_port()  # the receiver is down: both attempts are refused
    async with gateway.client("acme") as http:
        answer = await http.post(
            "/v1/jobs",
            json={
                "type": "ai.generate",
                "input": {"prompt": "browser: hook"},
                "webhook": {"url": f"http://127.0.0.1:{port}/hook?token=s3cret"},
            },
        )
    assert answer.status_code == 202, answer.text
    job_id = answer.json()["id"]
    async with admin_client(gateway.base_url) as admin:

        async def letters() -> list[dict[str, Any]]:
            items: list[dict[str, Any]] = (
                await admin.get(f"/v1/admin/dead-letters/{dead}")
            ).json()["items"]
            return items

        await wait_until(
            letters,
            lambda items: any(item["job_id"] == job_id for item in items),
            timeout=15,
            what=f"the delivery of {job_id} in {dead}",
        )

    page = await open_dashboard(browser, gateway)
    await page.select_option("#dead-queue", dead)
    letter = page.locator(f'#dead tr[data-job="{job_id}"]')
    await expect(letter).to_contain_text(f"webhook completed → http://127.0.0.1:{port}")
    await expect(letter).to_contain_text("attempts exhausted: 2 of 2")
    await expect(letter).not_to_contain_text("s3cret")

    hooks = Receiver()
    async with serve(hooks.app, port):
        await letter.locator("button.replay").click()
        await expect(page.locator("#dead-status")).to_contain_text("Replayed 1 webhook delivery")
        [request] = await hooks.wait_for("hook", 1)
    assert request.json["data"]["job_id"] == job_id
    await expect(letter).to_have_count(0)
    await expect(page.locator("#audit li").first).to_contain_text(f"replayed 1 from {dead}")
    await page.close()


async def test_a_wrong_key_is_refused_on_the_page(
    browser: BrowserContext, gateway: RunningGateway
) -> None:
    page = await browser.new_page()
    page.set_default_timeout(15_000)
    await page.goto(f"{gateway.base_url}/dashboard")
    await page.fill("#admin-key", gateway.api_keys["acme"])  # a tenant's key, not an admin's
    await page.click("#login-form button[type=submit]")
    await expect(page.locator("#login-error")).to_contain_text("admin key")
    await expect(page.locator("#board")).to_be_hidden()
