"""Webhook secrets, health, metrics and the OpenAPI document, over real HTTP."""

from tests.support.gateway import RunningGateway, ai_job, assert_problem


async def test_webhook_secret_is_per_tenant_and_rotates_with_overlap(
    gateway: RunningGateway,
) -> None:
    async with gateway.client("acme") as acme, gateway.client("globex") as globex:
        first = (await acme.get("/v1/webhook-secret")).json()
        assert first["secret"].startswith("whsec_")
        assert first["signing"] == [first["secret"]]
        assert (await acme.get("/v1/webhook-secret")).json() == first

        rotated = await acme.post("/v1/webhook-secret/rotate")
        assert rotated.status_code == 200
        assert rotated.headers["cache-control"] == "no-store"
        after = rotated.json()
        assert after["secret"] != first["secret"]
        assert after["signing"] == [after["secret"], first["secret"]]
        assert (await acme.get("/v1/webhook-secret")).json() == after

        other = (await globex.get("/v1/webhook-secret")).json()
        assert other["secret"] not in after["signing"]
    async with gateway.client(None) as anonymous:
        assert_problem(await anonymous.get("/v1/webhook-secret"), 401)
        assert_problem(await anonymous.post("/v1/webhook-secret/rotate"), 401)


async def test_health_readiness_and_metrics(gateway: RunningGateway) -> None:
    async with gateway.client(None) as http:
        assert (await http.get("/healthz")).json() == {"status": "ok"}
        ready = await http.get("/readyz")
        assert ready.status_code == 200
        assert ready.json() == {"ready": True, "broker": True, "redis": True}
    async with gateway.client() as http:
        assert (await http.post("/v1/jobs", json=ai_job())).status_code == 202
        text = (await http.get("/metrics")).text
    assert 'offload_gateway_submissions_total{outcome="accepted",type="ai.generate"}' in text
    assert 'route="/v1/jobs",status="202"' in text
    assert 'offload_gateway_queue_depth{queue="ai.jobs"}' in text


async def test_openapi_documents_every_route_with_an_example_per_job_type(
    gateway: RunningGateway,
) -> None:
    async with gateway.client(None) as http:
        spec = (await http.get("/openapi.json")).json()
        docs = await http.get("/docs")
    assert docs.status_code == 200 and "swagger" in docs.text.lower()
    paths = spec["paths"]
    assert set(paths) >= {
        "/v1/jobs",
        "/v1/jobs/{job_id}",
        "/v1/files",
        "/v1/files/{file_id}",
        "/v1/webhook-secret",
        "/v1/webhook-secret/rotate",
        "/healthz",
        "/readyz",
    }
    submit = paths["/v1/jobs"]["post"]
    examples = submit["requestBody"]["content"]["application/json"]["examples"]
    assert sorted(example["value"]["type"] for example in examples.values()) == [
        "ai.generate",
        "image.process",
        "research.run",
        "video.generate",
    ]
    problem = {"$ref": "#/components/schemas/Problem"}
    for status in ("401", "409", "422", "429", "503"):
        assert submit["responses"][status]["content"]["application/problem+json"]["schema"] == (
            problem
        )
    assert "Problem" in spec["components"]["schemas"]
    listing = paths["/v1/jobs"]["get"]["responses"]["422"]
    assert listing["content"]["application/problem+json"]["schema"] == problem
