"""The job types one deployment runs: Offload's own, plus any it declares itself.

A deployment adds a job type without editing Offload: its package holds a
`JobSpec`, and `OFFLOAD_JOB_SPECS` names it (`module:ATTRIBUTE`, comma-separated).
The gateway builds its catalog from that setting at start-up, and derives
from it what it accepts, documents and declares.
"""

from collections.abc import Iterable, Sequence
from importlib import import_module
from typing import Any, Literal

from pydantic import TypeAdapter

from offload_contracts.api import submission_union
from offload_contracts.jobs import BUILTIN_SPECS, JobSpec


class JobCatalog:
    """A set of job specs, by type, with the models and adapters derived from them."""

    def __init__(self, specs: Iterable[JobSpec[Any, Any]]) -> None:
        self.specs: dict[str, JobSpec[Any, Any]] = {}
        for spec in specs:
            if spec.type in self.specs:
                raise ValueError(f"job type {spec.type!r} is declared twice")
            self.specs[spec.type] = spec
        types = tuple(self.specs)
        submissions = submission_union(self.specs.values())
        self.submission_adapter: TypeAdapter[Any] = TypeAdapter(submissions)
        literal: Any = Literal[types]
        self.type_adapter: TypeAdapter[str] = TypeAdapter(literal)

    @classmethod
    def load(cls, paths: Sequence[str] = ()) -> "JobCatalog":
        """The built-in types plus the specs at `paths` (`module:ATTRIBUTE`)."""
        return cls([*BUILTIN_SPECS, *(import_spec(path) for path in paths)])

    @property
    def types(self) -> tuple[str, ...]:
        return tuple(self.specs)

    @property
    def services(self) -> tuple[str, ...]:
        """Every service that consumes one of these types, in declaration order."""
        return tuple(dict.fromkeys(spec.service for spec in self.specs.values()))

    def spec(self, job_type: str) -> JobSpec[Any, Any]:
        return self.specs[job_type]

    def of_service(self, service: str) -> list[JobSpec[Any, Any]]:
        return [spec for spec in self.specs.values() if spec.service == service]


def import_spec(path: str) -> JobSpec[Any, Any]:
    """`package.module:ATTRIBUTE` → that `JobSpec`, with a clear error when it is not one."""
    module_name, _, attribute = path.strip().partition(":")
    if not module_name or not attribute:
        raise ValueError(f"a job spec is named `module:ATTRIBUTE`, not {path!r}")
    try:
        module = import_module(module_name)
    except ImportError as exc:
        raise ValueError(f"cannot import the job spec {path!r}: {exc}") from exc
    spec = getattr(module, attribute, None)
    if not isinstance(spec, JobSpec):
        raise ValueError(f"{path!r} is not a JobSpec")
    return spec


BUILTIN_CATALOG = JobCatalog(BUILTIN_SPECS)
"""Offload's own job types."""
