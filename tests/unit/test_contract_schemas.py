"""A contract change is always deliberate: each model's JSON schema is snapshotted.

After changing a contract on purpose, regenerate with
`uv run pytest tests/unit/test_contract_schemas.py --update-snapshots` and commit the diff.
"""

import json
from pathlib import Path

import pytest
from pydantic import BaseModel

from offload_contracts import JOB_REQUEST_ADAPTER, JobError, JobEvent, JobPolicy, admin, api, jobs
from offload_contracts.webhooks import WEBHOOK_MODELS

SNAPSHOTS = Path(__file__).parent / "snapshots"

MODELS: dict[str, type[BaseModel]] = {
    "JobEvent": JobEvent,
    "JobError": JobError,
    "JobPolicy": JobPolicy,
    **{f"{name}.request": model for name, model in jobs.REQUEST_MODELS.items()},
    **{f"{name}.result": model for name, model in jobs.RESULT_MODELS.items()},
    **{f"api.{name}": model for name, model in api.API_MODELS.items()},
    **{f"webhooks.{name}": model for name, model in WEBHOOK_MODELS.items()},
    **{f"admin.{name}": model for name, model in admin.ADMIN_MODELS.items()},
}


def _schemas() -> dict[str, dict[str, object]]:
    schemas = {name: model.model_json_schema() for name, model in MODELS.items()}
    schemas["JobRequest"] = JOB_REQUEST_ADAPTER.json_schema()
    return schemas


@pytest.mark.parametrize("name", sorted(_schemas()))
def test_contract_schema_matches_its_snapshot(name: str, request: pytest.FixtureRequest) -> None:
    schema = json.dumps(_schemas()[name], indent=2, sort_keys=True) + "\n"
    path = SNAPSHOTS / f"{name}.json"
    if request.config.getoption("--update-snapshots"):
        path.write_text(schema)
    assert path.exists(), f"no snapshot for {name}: run with --update-snapshots"
    assert schema == path.read_text(), f"{name} changed: if on purpose, --update-snapshots"


@pytest.mark.parametrize(
    "model", [JobEvent, *jobs.REQUEST_MODELS.values(), *admin.ADMIN_MODELS.values()]
)
def test_contracts_are_frozen_and_forbid_unknown_fields(model: type[BaseModel]) -> None:
    assert model.model_config.get("frozen") is True
    assert model.model_config.get("extra") == "forbid"


def test_every_contract_field_is_described() -> None:
    undocumented = []
    for name, model in MODELS.items():
        for field_name, field in model.model_fields.items():
            if field_name in {"type", "input", "op"}:
                continue  # the discriminator and the typed payload explain themselves
            if not field.description:
                undocumented.append(f"{name}.{field_name}")
    assert undocumented == []


def test_every_job_type_has_a_policy_below_the_consumer_timeout() -> None:
    assert set(jobs.POLICIES) == set(jobs.REQUEST_MODELS)
    assert all(policy.timeout_s < 30 * 60 for policy in jobs.POLICIES.values())
