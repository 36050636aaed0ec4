"""The topology the runtime declares is DESIGN §3's, as RabbitMQ itself reports it."""

import json
import subprocess

from offload_runtime.broker import declare_service_topology
from tests.support.harness import Harness


def _queues(vhost: str) -> dict[str, dict[str, object]]:
    out = subprocess.run(
        [
            "rabbitmqctl",
            "list_queues",
            "-p",
            vhost,
            "name",
            "type",
            "arguments",
            "--formatter",
            "json",
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    return {q["name"]: q for q in json.loads(out)}


def _bindings(vhost: str) -> set[tuple[str, str, str]]:
    out = subprocess.run(
        [
            "rabbitmqctl",
            "list_bindings",
            "-p",
            vhost,
            "source_name",
            "destination_name",
            "routing_key",
            "--formatter",
            "json",
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    return {(b["source_name"], b["destination_name"], b["routing_key"]) for b in json.loads(out)}


def _args(queue: dict[str, object]) -> dict[str, object]:
    # rabbitmqctl's JSON lists each argument as [name, AMQP type, value]
    raw = queue["arguments"]
    assert isinstance(raw, list)
    return {name: value for name, _type, value in raw}


async def test_declared_topology_matches_the_design_and_is_idempotent(harness: Harness) -> None:
    svc = harness.service
    # Declaring again (every replica does, at every start) must change nothing.
    await declare_service_topology(
        harness.broker, svc, harness.settings.tiers, delivery_limit=harness.settings.delivery_limit
    )
    queues = _queues(harness.infra.vhost)

    work = queues[f"{svc}.jobs"]
    assert work["type"] == "quorum"
    assert _args(work) == {
        "x-queue-type": "quorum",
        "x-dead-letter-exchange": "jobs.dead",
        "x-dead-letter-routing-key": svc,
        "x-delivery-limit": harness.settings.delivery_limit,
    }
    for tier in harness.settings.tiers:
        retry = queues[f"{svc}.retry.{tier.name}"]
        assert retry["type"] == "quorum"
        assert _args(retry) == {
            "x-queue-type": "quorum",
            "x-message-ttl": tier.delay_ms,
            "x-dead-letter-exchange": "",
            "x-dead-letter-routing-key": f"{svc}.jobs",
            "x-dead-letter-strategy": "at-least-once",
            "x-overflow": "reject-publish",
        }
    assert queues[f"{svc}.dead"]["type"] == "quorum"

    bindings = _bindings(harness.infra.vhost)
    assert ("jobs", f"{svc}.jobs", f"{svc}.#") in bindings
    assert ("jobs.dead", f"{svc}.dead", svc) in bindings
