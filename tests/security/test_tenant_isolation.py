"""Tenant isolation on every route: another tenant's job, file, events or secret is a 404
exactly like a missing one (no oracle), listings and streams carry only the caller's own,
and the admin API takes only admin keys.

One gateway, one image worker and one notifier share a Redis prefix and the
same API keys, as in a deployment; tenants `acme` (the owner) and `globex`
(the other one) both hold valid keys.
"""

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from tests.e2e.test_image_e2e import photo, submit, upload
from tests.security.report import record
from tests.support.gateway import RunningGateway, ai_job, assert_problem, poll_job
from tests.support.infra import Infra
from tests.support.notifier import (
    JobDriver,
    NotifierSpace,
    RunningNotifier,
    running_notifier,
    sse,
)

OWNER, OTHER = "acme", "globex"


@pytest.fixture(scope="module")
async def notifier(infra: Infra, guarded: RunningGateway) -> AsyncIterator[RunningNotifier]:
    """The notifier on the gateway's Redis prefix and keys: it sees the gateway's jobs."""
    space = NotifierSpace(
        infra=infra,
        prefix=guarded.settings.redis_prefix,
        service=f"nt{uuid.uuid4().hex[:10]}",
        api_keys=guarded.api_keys,
        store=guarded.deps.store,
        jobs=JobDriver(guarded.deps.store),
        redis=guarded.deps.redis,
    )
    async with running_notifier(space) as running:
        yield running


def same_shape(answer: httpx.Response, missing: httpx.Response, secret_id: str) -> None:
    """A 404 for another tenant's resource tells nothing a 404 for no resource would not."""
    assert (answer.status_code, missing.status_code) == (404, 404)
    assert answer.headers["content-type"] == missing.headers["content-type"]
    mine, theirs = answer.json(), missing.json()
    assert mine["title"] == theirs["title"]
    assert set(mine) == set(theirs)
    assert mine["detail"].replace(secret_id, "X") == theirs["detail"].replace("no-such-id", "X")


async def test_another_tenants_job_is_404_on_read_cancel_list_and_idempotency(
    guarded: RunningGateway,
) -> None:
    async with guarded.client(OWNER) as owner, guarded.client(OTHER) as other:
        key = f"order-{uuid.uuid4().hex}"
        job = await owner.post("/v1/jobs", json=ai_job("owner's"), headers={"Idempotency-Key": key})
        assert job.status_code == 202
        job_id = job.json()["id"]
        mine = await other.post("/v1/jobs", json=ai_job("other's"))
        assert mine.status_code == 202

        same_shape(
            await other.get(f"/v1/jobs/{job_id}"), await other.get("/v1/jobs/no-such-id"), job_id
        )
        same_shape(
            await other.delete(f"/v1/jobs/{job_id}"),
            await other.delete("/v1/jobs/no-such-id"),
            job_id,
        )
        assert (await owner.get(f"/v1/jobs/{job_id}")).json()["status"] == "waiting"  # untouched

        # Listing, with every filter and with the owner's own cursor: only the caller's jobs.
        owner_page = (await owner.get("/v1/jobs", params={"limit": 1})).json()
        listed: set[str] = set()
        for params in (
            {},
            {"limit": 100},
            {"status": "waiting"},
            {"type": "ai.generate"},
            {"cursor": owner_page["next_cursor"]} if owner_page["next_cursor"] else {},
        ):
            answer = await other.get("/v1/jobs", params=params)
            assert answer.status_code in (200, 422), answer.text
            if answer.status_code == 200:
                listed |= {item["id"] for item in answer.json()["items"]}
        assert job_id not in listed
        assert mine.json()["id"] in listed

        # The same Idempotency-Key is another tenant's own: a new job, never the owner's
        # (no replay) and never a 409 (which would tell the key was used).
        same_body = await other.post(
            "/v1/jobs", json=ai_job("owner's"), headers={"Idempotency-Key": key}
        )
        other_body = await other.post(
            "/v1/jobs", json=ai_job("different"), headers={"Idempotency-Key": f"{key}-2"}
        )
        assert same_body.status_code == 202, same_body.text
        assert same_body.json()["id"] != job_id
        assert other_body.status_code == 202
        replay = await owner.post(
            "/v1/jobs", json=ai_job("owner's"), headers={"Idempotency-Key": key}
        )
        assert replay.status_code == 200 and replay.json()["id"] == job_id
    record(
        "tenant isolation: jobs",
        "GET, DELETE, list (5 filter/cursor variants) and Idempotency-Key reuse by another tenant",
        "404 shaped exactly like a missing job's; job untouched; listings without it; "
        "the same key made the other tenant a new job (no replay, no 409)",
    )


async def test_another_tenants_file_is_404_for_download_range_etag_and_as_an_image_source(
    guarded: RunningGateway,
) -> None:
    async with guarded.client(OWNER) as owner, guarded.client(OTHER) as other:
        file_id = await upload(owner, photo(120, 90))
        ref = (await owner.get(f"/v1/files/{file_id}")).headers
        etag = ref["etag"]
        missing = await other.get("/v1/files/no-such-id")
        for headers in (
            {},
            {"Range": "bytes=0-0"},
            {"Range": "bytes=999999-"},
            {"If-None-Match": etag},
        ):
            answer = await other.get(f"/v1/files/{file_id}", headers=headers)
            # Not 206/416 (would leak the size), not 304 (would confirm the checksum).
            same_shape(answer, missing, file_id)
        # Used as another tenant's image source: not found, the owner's file unread.
        job = await poll_job(other, await submit(other, {"file_id": file_id}), timeout=30)
        assert job["status"] == "failed" and job["attempt"] == 1, job
        assert f"source file {file_id} not found" in job["error"]["message"]
        assert (await owner.get(f"/v1/files/{file_id}")).status_code == 200
    record(
        "tenant isolation: files",
        "another tenant's GET, Range (in and past the file), If-None-Match with the right ETag, "
        "and image.process with the file as its source",
        "404 ×4 shaped like a missing file's (no 206/416/304 oracle); the image job failed "
        "'source file … not found'",
    )


async def test_webhook_secrets_are_per_tenant_for_read_and_rotate(guarded: RunningGateway) -> None:
    async with guarded.client(OWNER) as owner, guarded.client(OTHER) as other:
        owner_first = (await owner.get("/v1/webhook-secret")).json()
        other_first = (await other.get("/v1/webhook-secret")).json()
        assert owner_first["secret"] != other_first["secret"]
        other_rotated = (await other.post("/v1/webhook-secret/rotate")).json()
        assert (await owner.get("/v1/webhook-secret")).json() == owner_first  # not touched
        owner_rotated = (await owner.post("/v1/webhook-secret/rotate")).json()
        seen_by_other = (await other.get("/v1/webhook-secret")).json()
    owner_secrets = {owner_first["secret"], *owner_rotated["signing"]}
    assert owner_secrets.isdisjoint(seen_by_other["signing"])
    assert owner_secrets.isdisjoint(other_rotated["signing"])
    record(
        "tenant isolation: webhook secrets",
        "two tenants read and rotate in turn",
        "each sees only its own (current and previous); a rotation by one leaves the other's "
        "unchanged",
    )


async def test_sse_streams_show_a_tenant_only_its_own_jobs(
    guarded: RunningGateway, notifier: RunningNotifier
) -> None:
    async with (
        guarded.client(OWNER) as owner,
        notifier.client(OWNER) as owner_events,
        notifier.client(OTHER) as other_events,
    ):
        async with sse(other_events, "/v1/events") as other_stream:
            await other_stream.next()  # `: subscribed`: live from here
            owner_job = (await owner.post("/v1/jobs", json=ai_job("owner's"))).json()["id"]
            async with guarded.client(OTHER) as other:
                other_job = (await other.post("/v1/jobs", json=ai_job("other's"))).json()["id"]
            # The owner's event was relayed first: had it reached this stream, it would
            # come before the other tenant's own. Events of the other tenant's earlier
            # jobs (from earlier tests) may still arrive first; none may be the owner's.
            for _ in range(50):
                [event] = await other_stream.events(1, timeout=10)
                assert event.json["tenant"] == OTHER, event.json
                assert event.json["job_id"] != owner_job, event.json
                if event.json["job_id"] == other_job:
                    break
            else:
                raise AssertionError("the other tenant's own job event never arrived")

        missing = await other_events.get("/v1/jobs/no-such-id/events")
        denied = await other_events.get(f"/v1/jobs/{owner_job}/events")
        same_shape(denied, missing, owner_job)
        # Resuming with an id from the owner's stream changes nothing.
        async with sse(owner_events, f"/v1/jobs/{owner_job}/events") as owner_stream:
            [queued] = await owner_stream.events(1, timeout=10)
        assert queued.json["job_id"] == owner_job and queued.id
        resumed = await other_events.get(
            f"/v1/jobs/{owner_job}/events", headers={"Last-Event-ID": queued.id}
        )
        same_shape(resumed, missing, owner_job)
        async with notifier.client(None) as anonymous:
            no_key = await anonymous.get(f"/v1/jobs/{owner_job}/events")
        assert no_key.status_code == 401
    record(
        "tenant isolation: events (notifier SSE)",
        "another tenant's job stream (plain and with Last-Event-ID); the tenant stream while "
        "both tenants submit",
        "404 shaped like a missing job's; the tenant stream carried only the caller's events; "
        "no key 401",
    )


ADMIN_ROUTES: list[tuple[str, str, dict[str, Any] | None]] = [
    ("GET", "/v1/admin/queues", None),
    ("GET", "/v1/admin/dead-letters/ai.dead", None),
    ("POST", "/v1/admin/dead-letters/ai.dead/replay", {"all": True}),
    ("DELETE", "/v1/admin/dead-letters/ai.dead?confirm=ai.dead", None),
    ("GET", "/v1/admin/audit", None),
    ("GET", "/v1/admin/jobs", None),
    ("GET", "/v1/admin/jobs/{job_id}", None),
    ("GET", "/v1/admin/events", None),
]


async def test_admin_routes_refuse_no_key_a_wrong_key_and_tenant_keys(
    guarded: RunningGateway,
) -> None:
    async with guarded.client(OWNER) as owner:
        prompt = f"confidential-{uuid.uuid4().hex}"
        job_id = (await owner.post("/v1/jobs", json=ai_job(prompt))).json()["id"]
    seen: dict[str, set[int]] = {"none": set(), "wrong": set(), "tenant": set()}
    async with guarded.client(None) as http:
        for method, template, body in ADMIN_ROUTES:
            path = template.format(job_id=job_id)
            for who, headers in (
                ("none", {}),
                ("wrong", {"Authorization": f"Bearer wrong-{uuid.uuid4().hex}"}),
                ("wrong", {"Authorization": "Basic YWRtaW46YWRtaW4="}),
                ("tenant", guarded.headers(OWNER)),
                ("tenant", guarded.headers(OTHER)),
            ):
                answer = await asyncio.wait_for(
                    http.request(method, path, json=body, headers=headers), 10
                )
                seen[who].add(answer.status_code)
                expected = 403 if who == "tenant" else 401
                assert_problem(answer, expected)
                assert prompt not in answer.text and OWNER not in answer.text
        # And an admin key is no tenant's key: it cannot act on the tenant API.
        admin = {"Authorization": f"Bearer {guarded.settings.admin_keys}"}
        assert_problem(await http.post("/v1/jobs", json=ai_job(), headers=admin), 401)
        assert_problem(await http.get(f"/v1/jobs/{job_id}", headers=admin), 401)
    record(
        "admin routes without an admin key",
        f"{len(ADMIN_ROUTES)} admin routes × (no key, 2 wrong keys, 2 tenant keys); "
        "the admin key on tenant routes",
        f"no key/wrong key {sorted(seen['none'] | seen['wrong'])}, tenant keys "
        f"{sorted(seen['tenant'])}; the admin key is 401 on tenant routes",
    )
