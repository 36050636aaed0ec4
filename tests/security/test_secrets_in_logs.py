"""No secret in any log line: every service runs as a real process at debug level, the test
makes them handle every secret there is, then searches everything each process wrote.

Secrets handled: tenant API keys (right and wrong ones), the admin key, a
tenant's webhook secrets (current, and both during a rotation), the operations
webhook secret, the LLM provider key and the video provider key. The paths
taken: auth failures on the gateway, its admin API and the notifier; signed
webhook deliveries before and after a rotation; LLM calls that succeed, that
are retried (503s) and that are rejected (a dead letter, which raises a signed
operations alert); a video job against a provider that checks its key.

Then request headers: a fresh secret in every header a client could use, sent
to every HTTP surface (gateway, notifier, sandbox, a worker's `/metrics`) on
every kind of answer and on heads the server refuses, in both log formats;
and an error inside a request (in a handler, mid-stream, with a huge message),
whose traceback must be logged in full yet hold no header and stay bounded.
"""

import asyncio
import base64
import logging
import uuid
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest
import structlog
from fastapi import FastAPI
from fastapi.responses import StreamingResponse

from offload_runtime.logging import TRACEBACK_LIMIT, configure_logging, get_logger
from tests.security.report import record
from tests.support.infra import Infra
from tests.support.notifier import Receiver, verify
from tests.support.serving import free_port, serve
from tests.support.stack import API_KEY, Stack, running_stack
from tests.support.waiting import wait_until


async def wait_finished(stack: Stack, job_id: str, timeout: float = 60) -> dict[str, object]:
    async def get() -> dict[str, object]:
        job: dict[str, object] = (await stack.http.get(f"/v1/jobs/{job_id}")).json()
        return job

    return await wait_until(
        get,
        lambda job: job["status"] in ("completed", "failed", "cancelled"),
        timeout=timeout,
        what=f"job {job_id} finished",
        describe=lambda job: f"{job}; logs: {stack.logs()[-3000:]}",
    )


def variants(secret: str) -> set[str]:
    """The secret as it could be written: whole, and a `whsec_` secret's key material alone."""
    found = {secret}
    if secret.startswith("whsec_"):
        material = secret.removeprefix("whsec_")
        found |= {material, base64.b64decode(material).hex()}
    return found


async def test_no_api_key_webhook_secret_or_provider_key_appears_in_any_log_line(
    infra: Infra,
) -> None:
    video_key = f"vk-{uuid.uuid4().hex}"
    ops_secret = "whsec_" + base64.b64encode(uuid.uuid4().bytes * 2).decode()
    wrong_keys = [f"wrong-{uuid.uuid4().hex}" for _ in range(3)]
    hooks = Receiver()
    async with (
        serve(hooks.app) as hooks_base,
        running_stack(
            infra,
            log_level="debug",
            webhook_allow_private=True,
            notifier_service=f"nt{uuid.uuid4().hex[:10]}",
            ops_webhook_url=f"{hooks_base}/ops",
            ops_webhook_secret=ops_secret,
            sandbox_video_api_key=video_key,
            video_api_key=video_key,
            sandbox_video_render_s=0.2,
            sandbox_video_render_s_per_video_s=0.01,
            sandbox_video_bytes_per_second=20_000,
            video_poll_initial_s=0.05,
            video_poll_max_s=0.1,
        ) as stack,
    ):
        notifier_port = free_port()
        stack.start("notifier", "offload_notifier", notifier_port=notifier_port)
        stack.start(
            "video",
            "offload_video",
            video_base_url=f"http://127.0.0.1:{stack.settings['sandbox_port']}",
        )
        notifier_url = f"http://127.0.0.1:{notifier_port}"
        await stack.wait_ready(notifier_url, "/readyz")
        admin_key = stack.settings["admin_keys"]

        # Auth failures everywhere, with keys that look real.
        async with httpx.AsyncClient(timeout=10) as raw:
            for wrong in wrong_keys:
                bearer = {"Authorization": f"Bearer {wrong}"}
                for url in (
                    f"{stack.gateway_url}/v1/jobs",
                    f"{stack.gateway_url}/v1/webhook-secret",
                    f"{stack.gateway_url}/v1/admin/queues",
                    f"{notifier_url}/v1/events",
                ):
                    assert (await raw.get(url, headers=bearer)).status_code == 401
                # A tenant's key on the admin API, the admin key on the tenant API.
                tenant_on_admin = await raw.get(
                    f"{stack.gateway_url}/v1/admin/queues",
                    headers={"Authorization": f"Bearer {API_KEY}"},
                )
                assert tenant_on_admin.status_code == 403
                admin_on_tenant = await raw.get(
                    f"{stack.gateway_url}/v1/jobs", headers={"Authorization": f"Bearer {admin_key}"}
                )
                assert admin_on_tenant.status_code == 401
            admin_ok = await raw.get(
                f"{stack.gateway_url}/v1/admin/queues",
                headers={"Authorization": f"Bearer {admin_key}"},
            )
            assert admin_ok.status_code == 200, admin_ok.text

        # Webhooks signed with the secret, then with both secrets during a rotation.
        first = (await stack.http.get("/v1/webhook-secret")).json()["secret"]
        webhook = {"url": f"{hooks_base}/hook", "events": ["completed", "failed"]}
        before = await stack.http.post("/v1/jobs", json={**stack.ai_job(), "webhook": webhook})
        assert before.status_code == 202, before.text
        [delivered] = await hooks.wait_for("hook", 1, timeout=30)
        verify(delivered, [first])
        rotated = (await stack.http.post("/v1/webhook-secret/rotate")).json()
        assert rotated["secret"] != first and first in rotated["signing"]

        # LLM calls: plain, retried after 503s, and rejected (a dead letter → ops alert).
        jobs = {
            "plain": stack.ai_job(),
            "retried": stack.ai_job(model="sandbox-fail-2"),
            "rejected": stack.ai_job(model="sandbox-reject"),
            "video": {
                "type": "video.generate",
                "input": {"prompt": "a paper boat", "duration_s": 1, "resolution": "480p"},
            },
        }
        ids = {}
        for name, job in jobs.items():
            answer = await stack.http.post("/v1/jobs", json={**job, "webhook": webhook})
            assert answer.status_code == 202, answer.text
            ids[name] = answer.json()["id"]
        outcomes = {name: await wait_finished(stack, job_id) for name, job_id in ids.items()}
        assert outcomes["plain"]["status"] == "completed", outcomes["plain"]
        assert outcomes["retried"]["status"] == "completed", outcomes["retried"]
        assert outcomes["rejected"]["status"] == "failed", outcomes["rejected"]
        assert outcomes["video"]["status"] == "completed", outcomes["video"]
        after_rotation = await hooks.wait_for("hook", 1 + len(jobs), timeout=30)
        for item in after_rotation[1:]:
            verify(item, [rotated["secret"]])  # each signed by the new secret too
        [alert] = await hooks.wait_for("ops", 1, timeout=30)
        verify(alert, [ops_secret])

        # Stop everything cleanly so each process flushes its last lines, then search.
        for process in stack.processes.values():
            process.terminate(timeout=30)
        logs = {name: process.logs() for name, process in stack.processes.items()}

    secrets = {
        "tenant API key": API_KEY,
        "admin key": admin_key,
        "webhook secret (first)": first,
        "webhook secret (rotated)": rotated["secret"],
        "ops webhook secret": ops_secret,
        "LLM API key": stack.settings["llm_api_key"],
        "video API key": video_key,
        **{f"wrong key {i}": key for i, key in enumerate(wrong_keys)},
    }
    lines = {name: text.splitlines() for name, text in logs.items()}
    # The search is only worth something if the processes did log what they did (the
    # sandbox, with no access log, writes its start and stop lines only).
    assert all(len(found) > 5 for found in lines.values()), {n: len(v) for n, v in lines.items()}
    assert all(len(lines[name]) > 10 for name in ("ai", "gateway", "notifier", "video"))
    assert any("webhook delivered" in line for line in lines["notifier"])
    assert any(ids["plain"] in line for line in lines["ai"])
    assert any(ids["video"] in line for line in lines["video"])
    leaks = [
        (what, name, line[:300])
        for what, secret in secrets.items()
        for form in variants(secret)
        for name, found in lines.items()
        for line in found
        if form in line
    ]
    leaks += [
        ("Bearer", name, line[:300])
        for name, found in lines.items()
        for line in found
        if "bearer " in line.lower()
    ]
    assert leaks == [], leaks
    total = sum(len(found) for found in lines.values())
    record(
        "no secret in any log line",
        f"{len(logs)} processes at debug level ({', '.join(logs)}); {len(secrets)} secrets "
        "(API, admin, 3 wrong keys, webhook secrets before/after rotation, ops webhook, "
        "LLM and video keys); 401/403s, 5 signed deliveries, an ops alert, LLM retries, "
        "a rejection, a video render",
        f"{total:,} log lines searched for every secret and 'Bearer ': 0 found",
    )


# ---------------------------------------------------------------------- errors in requests


def secret_headers() -> dict[str, str]:
    """A fresh secret in every header a client could put one in."""
    names = [
        "Authorization",
        "Proxy-Authorization",
        "Cookie",
        "X-Api-Key",
        "X-Auth-Token",
        "X-Webhook-Secret",
        "Idempotency-Key",
        "User-Agent",
        "Referer",
        "X-Forwarded-For",
        "X-Request-Id",
    ]
    headers = {name: f"s3cret-{uuid.uuid4().hex}" for name in names}
    headers["Authorization"] = f"Bearer {headers['Authorization']}"
    headers["Proxy-Authorization"] = f"Basic {headers['Proxy-Authorization']}"
    return headers


def leaked(headers: dict[str, str], text: str) -> list[str]:
    """The headers whose secret appears anywhere in `text`."""
    return [name for name, value in headers.items() if value.split()[-1] in text]


@pytest.fixture
def own_logging() -> Iterator[None]:
    """Lets a test configure the process's logging, and puts the previous set-up back."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    config = structlog.get_config()
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    structlog.configure(**config)


def failing_app() -> FastAPI:
    """Errors where a service could have them: in a handler, mid-stream, with a huge message."""
    app = FastAPI()
    log = get_logger("probe")

    def fail(message: str) -> None:
        raise RuntimeError(message)

    @app.get("/handler")
    async def handler() -> None:
        fail("boom in the handler")

    @app.get("/stream")
    async def stream() -> StreamingResponse:
        async def body() -> AsyncIterator[bytes]:
            yield b"data: first\n\n"
            fail("boom in the stream")

        return StreamingResponse(body(), media_type="text/event-stream")

    @app.get("/huge")
    async def huge() -> None:
        fail("huge " + "x" * 500_000)

    @app.get("/logged")
    async def logged() -> dict[str, bool]:
        try:
            fail("boom logged by the service")
        except RuntimeError:
            log.error("handled", exc_info=True)
        return {"ok": True}

    return app


@pytest.mark.parametrize("fmt", ["json", "console"])
async def test_an_error_in_a_request_is_logged_with_its_traceback_but_not_its_headers(
    fmt: str, capsys: pytest.CaptureFixture[str], own_logging: None
) -> None:
    configure_logging("probe", level="debug", fmt=fmt)
    headers = secret_headers()
    async with serve(failing_app()) as base, httpx.AsyncClient(base_url=base) as http:
        for path in ("/handler", "/huge", "/logged"):
            await http.get(path, headers=headers)
        with pytest.raises(httpx.RemoteProtocolError):  # the stream breaks off
            async with http.stream("GET", "/stream", headers=headers) as answer:
                async for _ in answer.aiter_bytes():
                    pass
    out = capsys.readouterr().err
    # What an operator needs is there: each error, with the frames that raised it.
    for message in ("boom in the handler", "boom in the stream", "boom logged by the service"):
        assert message in out, out[-3000:]
    assert out.count("Traceback (most recent call last)") >= 4, out[-3000:]
    assert "in fail" in out
    # No header (not even a frame's locals holding the request's scope), and no record
    # anywhere near the size of the half-megabyte message.
    assert leaked(headers, out) == [], leaked(headers, out)
    assert "locals" not in out
    records = out.split("\n{") if fmt == "json" else out.split("\n20")
    assert max(len(r) for r in records) < TRACEBACK_LIMIT + 2000, max(map(len, records))
    assert "characters cut" in out


# ---------------------------------------------------------------------- every service, as run


def request_head(headers: dict[str, str], *extra: str, end: bool = True) -> bytes:
    """`GET /healthz` with these headers, then the `extra` lines as written."""
    lines = [f"{name}: {value}" for name, value in headers.items()] + list(extra)
    head = "GET /healthz HTTP/1.1\r\nHost: x\r\n" + "".join(f"{line}\r\n" for line in lines)
    return (head + "\r\n" if end else head).encode("latin-1")


async def exchange(base_url: str, data: bytes, *, wait_s: float = 5) -> bytes:
    """Write `data` as it is, then read until the server closes (or `wait_s` passes)."""
    host, port = base_url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(data)
        await writer.drain()
        return await asyncio.wait_for(reader.read(), wait_s)
    except (TimeoutError, ConnectionError):
        return b""
    finally:
        writer.close()


@pytest.mark.parametrize("fmt", ["json", "console"])
async def test_secrets_in_every_request_header_reach_no_log_line_of_any_service(
    infra: Infra, fmt: str
) -> None:
    headers = secret_headers()
    authorized = {**headers, "Authorization": f"Bearer {API_KEY}"}
    metrics_port, notifier_port = free_port(), free_port()
    async with running_stack(
        infra,
        log_level="debug",
        log_format=fmt,
        metrics_port=metrics_port,
        http_header_timeout_s=0.5,
        http_max_header_bytes=4096,
    ) as stack:
        stack.start("notifier", "offload_notifier", notifier_port=notifier_port)
        notifier = f"http://127.0.0.1:{notifier_port}"
        sandbox = f"http://127.0.0.1:{stack.settings['sandbox_port']}"
        worker = f"http://127.0.0.1:{metrics_port}"
        await stack.wait_ready(notifier, "/readyz")
        await stack.wait_ready(worker, "/metrics")
        bases = {"gateway": stack.gateway_url, "notifier": notifier, "sandbox": sandbox}

        async with httpx.AsyncClient(timeout=10) as http:
            # A job, so the tenant's event stream has entries to resume in.
            job = await http.post(
                f"{stack.gateway_url}/v1/jobs", json=stack.ai_job(), headers=authorized
            )
            assert job.status_code == 202, job.text
            await wait_finished(stack, job.json()["id"])
            calls = [
                # Refused keys, everywhere.
                *[("GET", f"{base}/v1/jobs", headers, None) for base in bases.values()],
                ("GET", f"{notifier}/v1/events", headers, None),
                ("GET", f"{worker}/metrics", headers, None),
                ("GET", f"{worker}/nowhere", headers, None),
                # Accepted keys with the other secrets beside them, on each kind of answer.
                ("POST", f"{stack.gateway_url}/v1/jobs", authorized, b"{not json"),
                ("POST", f"{stack.gateway_url}/v1/jobs", authorized, b'{"type": "nope"}'),
                ("GET", f"{stack.gateway_url}/v1/jobs/nope", authorized, None),
                ("PATCH", f"{stack.gateway_url}/v1/jobs", authorized, None),
                ("GET", f"{stack.gateway_url}/v1/admin/queues", authorized, None),
                ("POST", f"{stack.gateway_url}/v1/files", authorized, b"some bytes"),
                ("GET", f"{notifier}/v1/jobs/nope/events", authorized, None),
                ("POST", f"{sandbox}/v1/chat/completions", headers, b"{}"),
                ("POST", f"{sandbox}/v1/videos", headers, b'{"prompt": 1}'),
                ("GET", f"{sandbox}/v1/videos/nope", headers, None),
            ]
            statuses = []
            for method, url, sent, body in calls:
                answer = await http.request(method, url, headers=sent, content=body)
                statuses.append(answer.status_code)
            assert all(status < 500 for status in statuses), list(zip(calls, statuses, strict=True))
            # A resume point past 64 bits (it was a traceback holding the request's scope).
            for path in ("/v1/events", f"/v1/jobs/{job.json()['id']}/events"):
                for sent in (authorized, {**authorized, "Last-Event-ID": "1-99999999999999999999"}):
                    async with http.stream("GET", f"{notifier}{path}", headers=sent) as answer:
                        assert answer.status_code in (200, 400)
        # Heads the server refuses: unparseable, too large, too slow.
        unparseable = request_head(headers, "X-Bad\x01: 1")  # a control character in a name
        oversized = request_head(headers, "X-Pad: " + "a" * 8000)
        unfinished = request_head(headers, end=False)
        for base in bases.values():
            assert b" 400 " in (await exchange(base, unparseable))[:20]
            assert b" 431 " in (await exchange(base, oversized))[:20]
            assert b" 408 " in (await exchange(base, unfinished, wait_s=3))[:20]
        # The worker's /metrics server (prometheus_client's) takes a bad head as it is.
        await exchange(worker, unparseable)

        for process in stack.processes.values():
            process.terminate(timeout=30)
        logs = {name: process.logs() for name, process in stack.processes.items()}

    lines = {name: text.splitlines() for name, text in logs.items()}
    assert set(lines) == {"sandbox", "ai", "gateway", "notifier"}
    # Each process wrote in the format asked for, and logged the refused heads.
    opening = "{" if fmt == "json" else "20"
    for name, found in lines.items():
        assert len(found) > 5 and found[-1].startswith(opening), (name, found[-3:])
    for name in ("gateway", "notifier", "sandbox"):
        assert any("Invalid HTTP request received" in line for line in lines[name]), name
    leaks = [
        (header, name, line[:300])
        for name, found in lines.items()
        for line in found
        for header in leaked(headers, line)
    ]
    leaks += [
        ("Bearer", name, line[:300])
        for name, found in lines.items()
        for line in found
        if "bearer " in line.lower()
    ]
    assert leaks == [], leaks
    total = sum(len(found) for found in lines.values())
    record(
        f"no request header in any log line ({fmt})",
        f"gateway, notifier, sandbox and a worker's /metrics at debug level, "
        f"OFFLOAD_LOG_FORMAT={fmt}; a secret in each of {len(headers)} headers on "
        f"{len(calls) + 4} requests (401/403/404/405/400/422/201, an SSE stream, a "
        "Last-Event-ID past 64 bits) and on unparseable, oversized and slow heads",
        f"{total:,} log lines searched: 0 secrets, 0 'Bearer '",
    )
