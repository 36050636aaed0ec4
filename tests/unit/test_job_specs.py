"""Job specs: a job type declared once, and the catalog a gateway builds from them."""

import pytest
from pydantic import Field, ValidationError

from offload_contracts import AI_GENERATE, BUILTIN_SPECS, Contract, JobPolicy, JobSpec, topology
from offload_contracts.catalog import BUILTIN_CATALOG, JobCatalog, import_spec
from offload_gateway.settings import GatewaySettings


class EchoInput(Contract):
    """Say it back."""

    words: str = Field(min_length=1, description="What to say.")


def echo_spec(**overrides: object) -> JobSpec[EchoInput, EchoInput]:
    values: dict[str, object] = {
        "type": "echo.say",
        "service": "echo",
        "input": EchoInput,
        "result": EchoInput,
        "policy": JobPolicy(max_attempts=2, timeout_s=5),
        "summary": "say it back",
        "example": {"type": "echo.say", "input": {"words": "hi"}},
    }
    values.update(overrides)
    return JobSpec(**values)  # type: ignore[arg-type]


ECHO = echo_spec()


def test_the_worker_services_are_the_builtin_specs_services() -> None:
    assert topology.WORKER_SERVICES == ("ai", "research", "video", "image")
    assert BUILTIN_CATALOG.services == topology.WORKER_SERVICES
    assert [spec.type for spec in BUILTIN_SPECS] == list(BUILTIN_CATALOG.types)


def test_a_spec_makes_its_request_model() -> None:
    request = ECHO.request.model_validate(
        {
            "id": "j1",
            "tenant": "acme",
            "max_attempts": 2,
            "created_at": "2026-01-01T00:00:00Z",
            "input": {"words": "hi"},
        }
    )
    assert (request.type, request.input) == ("echo.say", EchoInput(words="hi"))
    assert ECHO.request.__name__ == "EchoSayRequest"
    with pytest.raises(ValidationError):
        ECHO.request.model_validate({**request.model_dump(), "type": "ai.generate"})


def test_a_type_outside_its_services_binding_is_refused() -> None:
    with pytest.raises(ValueError, match="must start with its service's name"):
        echo_spec(service="other")


def test_an_example_of_another_type_is_refused() -> None:
    with pytest.raises(ValueError, match="example"):
        echo_spec(example={"type": "ai.generate", "input": {}})


def test_the_catalog_accepts_its_types_and_names_them_when_refusing() -> None:
    catalog = JobCatalog([AI_GENERATE, ECHO])
    assert catalog.services == ("ai", "echo")
    body = catalog.submission_adapter.validate_python({"type": "echo.say", "input": {"words": "x"}})
    assert body.input == EchoInput(words="x")
    with pytest.raises(ValidationError, match=r"'ai\.generate', 'echo\.say'"):
        catalog.submission_adapter.validate_python({"type": "image.process", "input": {}})


def test_a_type_declared_twice_is_refused() -> None:
    with pytest.raises(ValueError, match="declared twice"):
        JobCatalog([ECHO, echo_spec()])


def test_the_gateway_loads_specs_by_path_and_refuses_a_bad_one() -> None:
    path = f"{__name__}:ECHO"
    assert import_spec(path) is ECHO
    assert GatewaySettings(job_specs=path).catalog.types[-1] == "echo.say"
    with pytest.raises(ValidationError, match="is not a JobSpec"):
        GatewaySettings(job_specs=f"{__name__}:EchoInput")
    with pytest.raises(ValidationError, match="module:ATTRIBUTE"):
        GatewaySettings(job_specs="no_colon_here")
    with pytest.raises(ValidationError, match="cannot import the job spec"):
        GatewaySettings(job_specs="no_such_module:SPEC")
