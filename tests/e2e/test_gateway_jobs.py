"""`/v1/jobs` over real HTTP, against the real Redis and RabbitMQ (DESIGN §2)."""

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest

from offload_contracts import AiGenerateInput, AiGenerateRequest, JobStatus
from tests.support.gateway import (
    INPUTS,
    RunningGateway,
    ai_job,
    assert_problem,
    running_gateway,
    take_request,
)
from tests.support.infra import Infra


@pytest.fixture(scope="module")
async def gateway(infra: Infra) -> AsyncIterator[RunningGateway]:
    async with running_gateway(infra) as gw:
        yield gw


# ---------------------------------------------------------------------- submit and read


@pytest.mark.parametrize("job_type", sorted(INPUTS))
async def test_each_job_type_is_accepted_recorded_and_queued(
    gateway: RunningGateway, infra: Infra, job_type: str
) -> None:
    async with gateway.client() as http:
        answer = await http.post("/v1/jobs", json={"type": job_type, "input": INPUTS[job_type]})
        assert answer.status_code == 202, answer.text
        job = answer.json()
        assert answer.headers["location"] == f"/v1/jobs/{job['id']}"
        assert job["type"] == job_type and job["status"] == "waiting" and job["attempt"] == 0
        assert job["links"] == {
            "self": f"/v1/jobs/{job['id']}",
            # Absolute: the notifier serves it (by default on this machine's port 8001).
            "events": f"http://127.0.0.1:8001/v1/jobs/{job['id']}/events",
            "result": None,
        }

        read = await http.get(answer.headers["location"])
        assert read.status_code == 200
        assert read.json()["status"] == "waiting"
        assert read.json()["max_attempts"] >= 1

    queued = await take_request(infra, job["id"])
    assert queued["type"] == job_type
    assert queued["tenant"] == "acme"
    assert queued["attempt"] == 1
    assert queued["input"][
        "source" if job_type == "image.process" else next(iter(INPUTS[job_type]))
    ]


async def test_a_webhook_is_kept_with_the_job(gateway: RunningGateway) -> None:
    webhook = {"url": "http://127.0.0.1:9/hook", "events": ["completed", "failed"]}
    async with gateway.client() as http:
        answer = await http.post("/v1/jobs", json={**ai_job(), "webhook": webhook})
    assert answer.status_code == 202, answer.text
    record = await gateway.deps.store.get(answer.json()["id"])
    assert record is not None and record.webhook == webhook


async def test_a_webhook_to_a_private_address_is_refused_unless_allowed(infra: Infra) -> None:
    async with running_gateway(infra, webhook_allow_private=False) as gw, gw.client() as http:
        answer = await http.post(
            "/v1/jobs", json={**ai_job(), "webhook": {"url": "http://127.0.0.1:8080/hook"}}
        )
        body = assert_problem(answer, 422)
        assert "webhook.url" in body["detail"]
        assert body["errors"][0]["loc"] == ["body", "webhook", "url"]
        listed = await http.get("/v1/jobs")
        assert listed.json()["items"] == []  # nothing was recorded


# ---------------------------------------------------------------------- bad requests


async def test_missing_or_unknown_api_key_is_401(gateway: RunningGateway) -> None:
    async with gateway.client(None) as http:
        for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": "Basic abc"}):
            for method, path in (("POST", "/v1/jobs"), ("GET", "/v1/jobs"), ("GET", "/v1/jobs/x")):
                answer = await http.request(method, path, json=ai_job(), headers=headers)
                assert_problem(answer, 401)
                assert answer.headers["www-authenticate"] == "Bearer"


async def test_invalid_input_is_422_with_field_errors_and_records_nothing(infra: Infra) -> None:
    cases = [
        (
            {"type": "ai.generate", "input": {"prompt": ""}},
            ["body", "ai.generate", "input", "prompt"],
        ),
        ({"type": "ai.generate", "input": {}}, ["body", "ai.generate", "input", "prompt"]),
        (
            {
                "type": "video.generate",
                "input": {"prompt": "x", "duration_s": 5, "resolution": "8k"},
            },
            ["body", "video.generate", "input", "resolution"],
        ),
        ({"type": "no.such.type", "input": {}}, ["body", "type"]),
        ({"input": {"prompt": "x"}}, ["body", "type"]),
        ({**ai_job(), "surprise": 1}, ["body", "ai.generate", "surprise"]),
        (
            {"type": "image.process", "input": {"source": {}, "operations": []}},
            ["body", "image.process", "input", "source"],
        ),
    ]
    async with running_gateway(infra) as fresh, fresh.client() as http:
        for payload, loc in cases:
            body = assert_problem(await http.post("/v1/jobs", json=payload), 422)
            assert any(error["loc"] == loc for error in body["errors"]), (payload, body)
        assert (await http.get("/v1/jobs")).json()["items"] == []


async def test_an_unknown_or_missing_job_type_is_named_with_the_known_ones(
    gateway: RunningGateway,
) -> None:
    known = "ai.generate, research.run, video.generate, image.process"
    async with gateway.client() as http:
        typo = assert_problem(
            await http.post("/v1/jobs", json={"type": "ai.generat", "input": {"prompt": "x"}}), 422
        )
        missing = assert_problem(await http.post("/v1/jobs", json={"input": {}}), 422)
    said = f"unknown job type 'ai.generat'; known types: {known}"
    assert typo["detail"] == f"the request is invalid: body.type: {said}"
    assert typo["errors"] == [{"loc": ["body", "type"], "msg": said, "type": "unknown_job_type"}]
    assert missing["errors"] == [
        {
            "loc": ["body", "type"],
            "msg": f"the job type is missing; known types: {known}",
            "type": "missing",
        }
    ]


async def test_malformed_json_is_400_and_a_non_json_body_is_415(gateway: RunningGateway) -> None:
    async with gateway.client() as http:
        broken = await http.post(
            "/v1/jobs", content=b'{"type": "ai.gen', headers={"Content-Type": "application/json"}
        )
        assert_problem(broken, 400)
        text = await http.post(
            "/v1/jobs", content=json.dumps(ai_job()), headers={"Content-Type": "text/plain"}
        )
        assert_problem(text, 415)
        huge_key = await http.post(
            "/v1/jobs", json=ai_job(), headers={"Idempotency-Key": "k" * 300}
        )
        assert_problem(huge_key, 422)


async def test_unknown_paths_and_methods_answer_problem_details(gateway: RunningGateway) -> None:
    async with gateway.client() as http:
        assert_problem(await http.get("/v1/nothing-here"), 404)
        wrong_method = await http.put("/v1/jobs")
        assert_problem(wrong_method, 405)
        assert "POST" in wrong_method.headers["allow"]


# ---------------------------------------------------------------------- tenants


async def test_another_tenants_job_is_404_for_read_and_cancel(gateway: RunningGateway) -> None:
    async with gateway.client("acme") as acme, gateway.client("globex") as globex:
        job = (await acme.post("/v1/jobs", json=ai_job())).json()
        assert_problem(await globex.get(f"/v1/jobs/{job['id']}"), 404)
        assert_problem(await globex.delete(f"/v1/jobs/{job['id']}"), 404)
        assert job["id"] not in [j["id"] for j in (await globex.get("/v1/jobs")).json()["items"]]
        # ... and the owner still sees it untouched.
        assert (await acme.get(f"/v1/jobs/{job['id']}")).json()["status"] == "waiting"
        assert_problem(await acme.get("/v1/jobs/does-not-exist"), 404)


# ---------------------------------------------------------------------- idempotency


async def test_same_idempotency_key_and_body_give_the_same_job(gateway: RunningGateway) -> None:
    key = {"Idempotency-Key": f"order-{uuid.uuid4().hex}"}
    async with gateway.client() as http:
        first = await http.post("/v1/jobs", json=ai_job("same"), headers=key)
        again = await http.post("/v1/jobs", json=ai_job("same"), headers=key)
        other_body = await http.post("/v1/jobs", json=ai_job("different"), headers=key)
        no_key = await http.post("/v1/jobs", json=ai_job("same"))
    async with gateway.client("globex") as other_tenant:
        same_key_other_tenant = await other_tenant.post(
            "/v1/jobs", json=ai_job("same"), headers=key
        )

    assert first.status_code == 202
    assert again.status_code == 200
    assert again.headers["idempotent-replayed"] == "true"
    assert again.json()["id"] == first.json()["id"]
    assert again.headers["location"] == first.headers["location"]
    assert "different request body" in assert_problem(other_body, 409)["detail"]
    assert no_key.json()["id"] != first.json()["id"]
    assert same_key_other_tenant.status_code == 202
    assert same_key_other_tenant.json()["id"] != first.json()["id"]
    ttl = await gateway.deps.redis.ttl(gateway.keys.idempotency("acme", key["Idempotency-Key"]))
    assert 24 * 3600 - 60 < ttl <= 24 * 3600


async def test_concurrent_requests_with_one_key_make_one_job(gateway: RunningGateway) -> None:
    key = {"Idempotency-Key": f"burst-{uuid.uuid4().hex}"}
    async with gateway.client() as http:
        answers = await asyncio.gather(
            *(http.post("/v1/jobs", json=ai_job("burst"), headers=key) for _ in range(10))
        )
    accepted = [a for a in answers if a.status_code in (200, 202)]
    in_flight = [a for a in answers if a.status_code == 409]
    assert len(accepted) + len(in_flight) == 10
    assert sum(1 for a in answers if a.status_code == 202) == 1
    assert len({a.json()["id"] for a in accepted}) == 1


# ---------------------------------------------------------------------- listing


async def test_listing_is_newest_first_cursor_paginated_and_filtered(infra: Infra) -> None:
    async with running_gateway(infra) as gw, gw.client() as http:
        made = []
        for n in range(7):
            job_type = "research.run" if n % 3 == 0 else "ai.generate"
            payload = {"type": job_type, "input": INPUTS[job_type]}
            made.append((await http.post("/v1/jobs", json=payload)).json())
        await http.delete(f"/v1/jobs/{made[1]['id']}")

        seen: list[str] = []
        cursor = None
        pages = 0
        while True:
            params: dict[str, Any] = {"limit": 3}
            if cursor:
                params["cursor"] = cursor
            page = (await http.get("/v1/jobs", params=params)).json()
            pages += 1
            assert len(page["items"]) <= 3
            seen += [job["id"] for job in page["items"]]
            cursor = page.get("next_cursor")
            if not cursor:
                break
        assert seen == [job["id"] for job in reversed(made)]
        assert pages == 3

        research = (await http.get("/v1/jobs", params={"type": "research.run"})).json()
        assert [j["id"] for j in research["items"]] == [made[i]["id"] for i in (6, 3, 0)]
        cancelled = (await http.get("/v1/jobs", params={"status": "cancelled"})).json()
        assert [j["id"] for j in cancelled["items"]] == [made[1]["id"]]

        # A job that expired is skipped, and a cursor pointing at it still works.
        first_page = (await http.get("/v1/jobs", params={"limit": 2})).json()
        await gw.deps.redis.delete(gw.keys.job(first_page["items"][1]["id"]))
        rest = (await http.get("/v1/jobs", params={"cursor": first_page["next_cursor"]})).json()
        assert [j["id"] for j in rest["items"]] == [job["id"] for job in reversed(made[:5])]
        everything = (await http.get("/v1/jobs", params={"limit": 100})).json()
        assert len(everything["items"]) == 6 and everything.get("next_cursor") is None

        assert_problem(await http.get("/v1/jobs", params={"cursor": "garbage"}), 422)
        assert_problem(await http.get("/v1/jobs", params={"limit": 0}), 422)
        assert_problem(await http.get("/v1/jobs", params={"status": "sleeping"}), 422)


# ---------------------------------------------------------------------- cancel


async def test_cancelling_a_waiting_job_means_it_never_runs(gateway: RunningGateway) -> None:
    async with gateway.client() as http:
        job = (await http.post("/v1/jobs", json=ai_job())).json()
        cancelled = await http.delete(f"/v1/jobs/{job['id']}")
        assert cancelled.status_code == 200
        assert cancelled.json()["status"] == "cancelled"
        assert cancelled.json()["finished_at"] is not None
        assert (await http.get(f"/v1/jobs/{job['id']}")).json()["status"] == "cancelled"
        body = assert_problem(await http.delete(f"/v1/jobs/{job['id']}"), 409)
        assert "cancelled" in body["detail"]

    # The queued request is still delivered; the worker's start CAS refuses it.
    record = await gateway.deps.store.get(job["id"])
    assert record is not None and record.status == JobStatus.CANCELLED
    request = AiGenerateRequest(
        id=job["id"],
        tenant="acme",
        max_attempts=job["max_attempts"],
        created_at=job["created_at"],
        input=AiGenerateInput(prompt="hello"),
    )
    started = await gateway.deps.store.start(request, "run-1", redelivered=False)
    assert not started.applied
