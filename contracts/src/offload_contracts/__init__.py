"""Offload contracts: every message and payload that crosses a process boundary.

Pydantic v2 models, frozen and `extra="forbid"`; topology names; per-type policy.
This package imports pydantic only.
"""

from offload_contracts.base import Contract
from offload_contracts.errors import JobError
from offload_contracts.events import EventKind, JobEvent, Progress
from offload_contracts.jobs import (
    INPUT_MODELS,
    JOB_REQUEST_ADAPTER,
    POLICIES,
    REQUEST_MODELS,
    RESULT_MODELS,
    TERMINAL_STATUSES,
    AiGenerateInput,
    AiGenerateRequest,
    AiGenerateResult,
    FileRef,
    ImageProcessInput,
    ImageProcessRequest,
    ImageProcessResult,
    JobPolicy,
    JobRequest,
    JobRequestBase,
    JobStatus,
    JobType,
    ResearchRunInput,
    ResearchRunRequest,
    ResearchRunResult,
    TraceContext,
    VideoGenerateInput,
    VideoGenerateRequest,
    VideoGenerateResult,
)

__all__ = [
    "INPUT_MODELS",
    "JOB_REQUEST_ADAPTER",
    "POLICIES",
    "REQUEST_MODELS",
    "RESULT_MODELS",
    "TERMINAL_STATUSES",
    "AiGenerateInput",
    "AiGenerateRequest",
    "AiGenerateResult",
    "Contract",
    "EventKind",
    "FileRef",
    "ImageProcessInput",
    "ImageProcessRequest",
    "ImageProcessResult",
    "JobError",
    "JobEvent",
    "JobPolicy",
    "JobRequest",
    "JobRequestBase",
    "JobStatus",
    "JobType",
    "Progress",
    "ResearchRunInput",
    "ResearchRunRequest",
    "ResearchRunResult",
    "TraceContext",
    "VideoGenerateInput",
    "VideoGenerateRequest",
    "VideoGenerateResult",
]
