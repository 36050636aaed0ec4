"""`docs/add-a-workload.md`, followed to the letter.

The guide's code blocks are written to a temporary directory as the package
they name; the real gateway learns the new job type from `OFFLOAD_JOB_SPECS`
alone, the worker runs as `python -m offload_text.app` in its own process, and
the notifier streams the job's events. Nothing of Offload's own code is edited,
so the guide cannot drift from what works.
"""

import os
import re
import uuid
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from offload_contracts import topology
from offload_notifier.app import build_app as build_notifier
from offload_notifier.settings import NotifierSettings
from tests.support.gateway import RunningGateway, assert_problem, poll_job, running_gateway
from tests.support.infra import Infra
from tests.support.notifier import sse
from tests.support.processes import ServiceProcess
from tests.support.serving import free_port, serve
from tests.support.topologies import delete_queues, service_queue_names
from tests.support.waiting import sync_probe, wait_until

GUIDE = Path(__file__).resolve().parents[2] / "docs" / "add-a-workload.md"
_BLOCK = re.compile(r"```python\n# (?P<path>\S+\.py)\n(?P<code>.*?)```", re.DOTALL)


def guide_files() -> dict[str, str]:
    """Every Python block of the guide that starts with `# <path>.py`: path → its text."""
    return {m["path"]: f"# {m['path']}\n{m['code']}" for m in _BLOCK.finditer(GUIDE.read_text())}


@dataclass
class Deployment:
    gateway: RunningGateway
    worker: ServiceProcess


@pytest.fixture
async def deployment(
    infra: Infra, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Deployment]:
    for path, text in guide_files().items():
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_text(text)
    monkeypatch.syspath_prepend(str(tmp_path))  # the gateway runs in this process
    notifier_port = free_port()
    notifier_service = f"nt{uuid.uuid4().hex[:10]}"
    async with AsyncExitStack() as stack:
        gateway = await stack.enter_async_context(
            running_gateway(
                infra,
                job_specs="offload_text.spec:TEXT_COUNT",
                notifier_public_url=f"http://127.0.0.1:{notifier_port}",
            )
        )
        settings = gateway.settings
        stack.push_async_callback(
            delete_queues,
            infra.rabbitmq_url,
            [
                *service_queue_names("text", settings.tiers),
                *service_queue_names(notifier_service, settings.tiers),
                topology.dead_alerts_queue(notifier_service),
            ],
        )
        notifier = build_notifier(
            NotifierSettings(
                rabbitmq_url=infra.rabbitmq_url,
                redis_url=infra.redis_url,
                redis_prefix=settings.redis_prefix,
                api_keys=settings.api_keys,
                notifier_service=notifier_service,
                retry_tiers=settings.retry_tiers,
                relay_block_ms=100,
                sse_block_ms=500,
                log_level="warning",
            )
        )
        await stack.enter_async_context(serve(notifier, port=notifier_port))
        worker = ServiceProcess(
            "offload_text.app",
            settings={
                "rabbitmq_url": infra.rabbitmq_url,
                "redis_url": infra.redis_url,
                "redis_prefix": settings.redis_prefix,
                "retry_tiers": settings.retry_tiers,
                "shutdown_grace_s": 1,
                "log_level": "info",
            },
        )
        worker.env["PYTHONPATH"] = os.pathsep.join(
            filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")])
        )
        worker.start()
        stack.callback(worker.stop)
        await wait_until(
            sync_probe(worker.logs),
            lambda logs: "worker starting" in logs,
            timeout=60,
            what="the text worker to start",
            interval=0.02,
            describe=lambda logs: logs[-2000:],
        )
        yield Deployment(gateway, worker)


def test_the_guide_needs_three_files_of_about_a_hundred_lines() -> None:
    files = guide_files()
    assert sorted(files) == [
        "offload_text/app.py",
        "offload_text/handlers.py",
        "offload_text/spec.py",
    ]
    assert sum(text.count("\n") for text in files.values()) <= 110


async def test_a_new_job_type_runs_through_the_gateway_and_a_worker(
    deployment: Deployment,
) -> None:
    async with deployment.gateway.client() as http:
        answer = await http.post(
            "/v1/jobs", json={"type": "text.count", "input": {"text": "to be or not to be"}}
        )
        assert answer.status_code == 202, answer.text
        job = answer.json()
        assert (job["type"], job["status"], job["max_attempts"]) == ("text.count", "waiting", 3)

        done = await poll_job(http, job["id"], timeout=30)
        assert done["status"] == "completed", (done, deployment.worker.logs()[-3000:])
        assert done["result"] == {"words": 6, "characters": 18}

        events_url = done["links"]["events"]
        async with (
            httpx.AsyncClient(headers=http.headers, timeout=10) as notifier,
            sse(notifier, events_url) as stream,
        ):
            events = [message.json for message in await stream.rest()]
        assert [event["event"] for event in events] == [
            "queued",
            "started",
            "progress",
            "completed",
        ]
        assert events[2]["progress"] == {"percent": 50.0, "message": "counting"}
        assert events[-1]["result"] == {"words": 6, "characters": 18}


async def test_the_new_type_is_validated_and_documented(deployment: Deployment) -> None:
    async with deployment.gateway.client() as http:
        problem = assert_problem(
            await http.post("/v1/jobs", json={"type": "text.count", "input": {"text": ""}}), 422
        )
        locations = [error["loc"] for error in problem["errors"]]
        assert locations == [["body", "text.count", "input", "text"]]

        unknown = assert_problem(
            await http.post("/v1/jobs", json={"type": "text.nope", "input": {}}), 422
        )
        assert "text.count" in unknown["errors"][0]["msg"]

        listed = await http.get("/v1/jobs", params={"type": "text.count"})
        assert listed.status_code == 200, listed.text

        document = (await http.get("/openapi.json")).json()
        assert "TextCountSubmission" in document["components"]["schemas"]
        examples = document["paths"]["/v1/jobs"]["post"]["requestBody"]["content"][
            "application/json"
        ]["examples"]
        assert examples["text.count"]["value"] == {
            "type": "text.count",
            "input": {"text": "to be or not to be"},
        }

        asyncapi = await http.get("/asyncapi/text")
        assert asyncapi.status_code == 200, asyncapi.text
        assert "text.jobs" in asyncapi.text
