"""docker-compose.yml is a valid Compose file and deploys Offload as DESIGN §7 says.

There is no Docker engine here, so the file is validated against the Compose
Specification's JSON schema, kept beside the checkout in `../shared/` (STACK-NOTES),
and then read the way `docker compose` reads it. `make compose-check` also runs
Debian's `docker-compose config -q` where that is installed.
"""

import json
import re
import tomllib
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from offload_contracts.topology import WORKER_SERVICES
from tests.support.settings import service_variables

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_SCHEMA = ROOT.parent / "shared" / "compose-spec.json"
HTTP_PORTS = {"gateway": 8000, "notifier": 8001, "sandbox": 8002}
OFFLOAD_SERVICES = (*HTTP_PORTS, *WORKER_SERVICES)
STORAGE_USERS = ("gateway", "video", "image")


def compose_schema() -> dict[str, Any]:
    schema: dict[str, Any] = json.loads(COMPOSE_SCHEMA.read_text())
    # It names draft-07 without the trailing `#`, which jsonschema does not recognise.
    assert "draft-07" in schema["$schema"]
    return schema


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return loaded


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, Any]:
    found: dict[str, Any] = compose["services"]
    return found


def test_the_compose_file_validates_against_the_compose_specification(
    compose: dict[str, Any],
) -> None:
    assert COMPOSE_SCHEMA.is_file(), (
        f"the Compose Specification schema is expected at {COMPOSE_SCHEMA} "
        "(the shared folder beside the checkout)"
    )
    schema = compose_schema()
    jsonschema.Draft7Validator.check_schema(schema)
    errors = sorted(
        jsonschema.Draft7Validator(schema).iter_errors(compose), key=lambda e: list(e.path)
    )
    assert not errors, "\n".join(f"{list(e.path)}: {e.message}" for e in errors)


def test_the_schema_check_catches_a_broken_file(compose: dict[str, Any]) -> None:
    # The validation above would be worthless if the schema accepted anything.
    broken = json.loads(json.dumps(compose))
    broken["services"]["video"]["depends_on"]["redis"]["condition"] = "service_ready"
    broken["services"]["redis"]["healthcheck"]["intervall"] = "5s"
    validator = jsonschema.Draft7Validator(compose_schema())
    assert len(list(validator.iter_errors(broken))) >= 2


def test_every_offload_service_is_built_from_the_one_dockerfile_with_its_service_arg(
    services: dict[str, Any],
) -> None:
    for name in OFFLOAD_SERVICES:
        assert name in services, f"{name} is missing from docker-compose.yml"
        build = services[name]["build"]
        assert build["context"] == "."
        assert build.get("dockerfile", "Dockerfile") == "Dockerfile"
        assert build["args"] == {"SERVICE": name}
        # The image installs `offload-<SERVICE>` from the workspace: that package must exist.
        project = tomllib.loads((ROOT / "services" / name / "pyproject.toml").read_text())
        assert project["project"]["name"] == f"offload-{name}"
        assert (ROOT / "services" / name / "src" / f"offload_{name}" / "__main__.py").is_file()


def test_the_dockerfile_installs_only_the_chosen_services_dependencies() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^ARG SERVICE$", dockerfile, re.MULTILINE)
    assert 'uv sync --frozen --package "offload-${SERVICE}" --no-dev' in dockerfile
    assert 'exec python -m \\"offload_${SERVICE}\\"' in dockerfile
    for copied in re.findall(r"^COPY (?!--from)(.+) \S+$", dockerfile, re.MULTILINE):
        for path in copied.split():
            assert (ROOT / path).exists(), f"the Dockerfile copies {path}, which does not exist"


def test_rabbitmq_has_the_management_ui_and_redis_keeps_an_append_only_file(
    services: dict[str, Any],
) -> None:
    assert services["rabbitmq"]["image"] == "rabbitmq:3.13-management"
    assert any(port.endswith(":15672") for port in services["rabbitmq"]["ports"])
    assert services["redis"]["image"].startswith("redis:7")
    command = services["redis"]["command"]
    assert command[command.index("--appendonly") + 1] == "yes"
    assert any(volume.endswith(":/data") for volume in services["redis"]["volumes"])


def test_every_service_has_a_health_check_and_waits_for_healthy_dependencies(
    services: dict[str, Any],
) -> None:
    for name, service in services.items():
        assert service.get("healthcheck", {}).get("test"), f"{name} has no health check"
    for name in OFFLOAD_SERVICES:
        test = services[name]["healthcheck"]["test"]
        if name in HTTP_PORTS:
            assert test[-1] == f"http://127.0.0.1:{HTTP_PORTS[name]}/healthz", name
        else:
            assert test[-2:] == ["/app/healthcheck.py", "worker"], name
            needs = services[name]["depends_on"]
            assert {"rabbitmq", "redis"} <= set(needs), name
        for dependency, condition in services[name].get("depends_on", {}).items():
            assert condition == {"condition": "service_healthy"}, (name, dependency)
            assert dependency in services


def test_replicas_and_resource_hints_per_service(services: dict[str, Any]) -> None:
    replicas = {name: services[name]["deploy"]["replicas"] for name in WORKER_SERVICES}
    assert replicas == {"ai": 2, "research": 2, "video": 4, "image": 1}

    def limit(name: str, resource: str) -> float:
        value = str(services[name]["deploy"]["resources"]["limits"][resource])
        units = {"K": 2**10, "M": 2**20, "G": 2**30}
        return float(value[:-1]) * units[value[-1]] if value[-1] in units else float(value)

    others = [name for name in WORKER_SERVICES if name != "image"]
    assert all(limit("image", "cpus") > limit(name, "cpus") for name in others)
    others = [name for name in WORKER_SERVICES if name != "video"]
    assert all(limit("video", "memory") >= limit(name, "memory") for name in others)
    assert limit("video", "memory") > limit("ai", "memory")


def test_file_storage_is_one_volume_shared_at_offload_storage_dir(
    compose: dict[str, Any], services: dict[str, Any]
) -> None:
    mounts = set()
    for name in STORAGE_USERS:
        storage_dir = services[name]["environment"]["OFFLOAD_STORAGE_DIR"]
        for volume in services[name]["volumes"]:
            source, target = volume.split(":")[:2]
            if target == storage_dir:
                mounts.add(source)
    assert len(mounts) == 1, f"gateway, video and image must share one volume, got {mounts}"
    assert mounts <= set(compose["volumes"])


def test_services_reach_rabbitmq_and_redis_by_their_compose_names(
    services: dict[str, Any],
) -> None:
    for name in (*WORKER_SERVICES, "gateway", "notifier"):
        env = services[name]["environment"]
        assert "@rabbitmq:5672/" in env["OFFLOAD_RABBITMQ_URL"]
        assert env["OFFLOAD_REDIS_URL"].startswith("redis://redis:6379/")
    for name in HTTP_PORTS:
        env = services[name]["environment"]
        assert env[f"OFFLOAD_{name.upper()}_HOST"] == "0.0.0.0"  # reachable from outside


def test_every_offload_variable_in_the_file_is_read_by_some_service(
    services: dict[str, Any],
) -> None:
    known = set().union(*(service_variables(service) for service in OFFLOAD_SERVICES))
    assert "OFFLOAD_RABBITMQ_URL" in known and "OFFLOAD_LLM_BASE_URL" in known
    used = {
        variable
        for service in services.values()
        for variable in (service.get("environment") or {})
        if variable.startswith("OFFLOAD_")
    }
    assert used - known == set(), "variables no service reads (typos?)"
