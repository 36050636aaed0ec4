"""The sandbox's webhook receiver, over real HTTP: it takes deliveries and lists them."""

import httpx

from tests.support.sandbox import running_sandbox


async def test_deliveries_are_kept_with_their_headers_and_listed_by_job() -> None:
    async with running_sandbox() as sandbox, httpx.AsyncClient(base_url=sandbox.base_url) as http:
        for job_id, kind in (("j1", "started"), ("j2", "completed"), ("j1", "completed")):
            answer = await http.post(
                "/v1/sandbox/webhooks",
                json={"type": f"ai.generate.{kind}", "data": {"job_id": job_id, "event": kind}},
                headers={"webhook-id": f"{job_id}-{kind}", "webhook-signature": "v1,abc"},
            )
            assert answer.status_code == 204
        mine = (await http.get("/v1/sandbox/webhooks", params={"job": "j1"})).json()
        everything = (await http.get("/v1/sandbox/webhooks")).json()
    assert mine["count"] == 2
    assert [w["body"]["data"]["event"] for w in mine["webhooks"]] == ["started", "completed"]
    assert mine["webhooks"][0]["headers"]["webhook-id"] == "j1-started"
    assert mine["webhooks"][0]["headers"]["webhook-signature"] == "v1,abc"
    assert everything["count"] == 3
