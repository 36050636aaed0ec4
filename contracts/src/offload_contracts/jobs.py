"""Job types: their inputs, results, the request envelope, policy, and one spec per type.

A job type is declared once, as a `JobSpec` (its name, owning service, input
and result models, policy and an example); the request message, the gateway's
submission model, the documents and the topology derive from it. A job
travels as a request: the envelope fields shared by every type, plus `type`
and `input`, discriminated by `type`. The gateway validates a client's
`{"type", "input"}` against the same models, so a bad input is refused with a
422 before anything is queued.
"""

import builtins
import re
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any, Generic, Literal, TypeVar, Union

from pydantic import Field, TypeAdapter, create_model, model_validator

from offload_contracts.base import Contract

# --------------------------------------------------------------------------- status


class JobStatus(StrEnum):
    """Where a job is in its life. See DESIGN §4 for the allowed transitions."""

    WAITING = "waiting"
    ACTIVE = "active"
    DELAYED = "delayed"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def is_terminal(self) -> bool:
        return self in TERMINAL_STATUSES


TERMINAL_STATUSES = frozenset({JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED})


# --------------------------------------------------------------------------- files


class FileRef(Contract):
    """A file held in Offload's storage."""

    id: str = Field(description="File id, usable with `GET /v1/files/{id}`.")
    url: str = Field(description="Path to download the file from the gateway.")
    bytes: int = Field(ge=0, description="Size in bytes.")
    sha256: str = Field(description="Hex SHA-256 of the content.")
    content_type: str = Field(description="MIME type.")


# --------------------------------------------------------------------------- ai.generate


class AiGenerateInput(Contract):
    """One LLM chat completion."""

    prompt: str = Field(min_length=1, max_length=100_000, description="The user message.")
    system: str | None = Field(default=None, max_length=100_000, description="System prompt.")
    model: str | None = Field(
        default=None, max_length=200, description="Model name; the service's default when absent."
    )
    max_tokens: int = Field(
        default=512, ge=1, le=32_768, description="Upper bound on output tokens."
    )
    temperature: float = Field(default=0.7, ge=0.0, le=2.0, description="Sampling temperature.")


class Usage(Contract):
    """Token accounting as reported by the provider."""

    prompt_tokens: int = Field(ge=0, description="Tokens in the prompt.")
    completion_tokens: int = Field(ge=0, description="Tokens generated.")
    total_tokens: int = Field(ge=0, description="Sum of both.")


class AiGenerateResult(Contract):
    """The generated text."""

    text: str = Field(description="The completion.")
    model: str = Field(description="The model that answered.")
    usage: Usage = Field(description="Token accounting.")


# --------------------------------------------------------------------------- research.run


class ResearchRunInput(Contract):
    """A question answered by a chain of LLM calls: plan, sub-answers, synthesis."""

    question: str = Field(min_length=1, max_length=20_000, description="The research question.")
    steps: int = Field(default=3, ge=3, le=5, description="How many sub-questions to research.")
    model: str | None = Field(default=None, max_length=200, description="Model name override.")


class ResearchStep(Contract):
    """One sub-question and its answer."""

    question: str = Field(description="The sub-question.")
    answer: str = Field(description="Its answer.")


class ResearchRunResult(Contract):
    """The synthesized report and the steps behind it."""

    report: str = Field(description="The final report.")
    steps: list[ResearchStep] = Field(description="Sub-questions in plan order, with answers.")


# --------------------------------------------------------------------------- video.generate


class VideoGenerateInput(Contract):
    """A video rendered by the external provider, then stored."""

    prompt: str = Field(min_length=1, max_length=10_000, description="What the video shows.")
    duration_s: int = Field(ge=1, le=600, description="Length in seconds.")
    resolution: Literal["480p", "720p", "1080p", "4k"] = Field(description="Output resolution.")
    model: str | None = Field(default=None, max_length=200, description="Provider model override.")


class VideoGenerateResult(Contract):
    """The stored video file."""

    file: FileRef = Field(description="The downloaded video.")


# --------------------------------------------------------------------------- image.process


class ImageSource(Contract):
    """Where the source image comes from: exactly one of `file_id` or `url`."""

    file_id: str | None = Field(
        default=None, pattern=r"^[A-Za-z0-9_-]{1,64}$", description="An uploaded file's id."
    )
    url: str | None = Field(
        default=None, pattern=r"^https://", max_length=2048, description="An https URL to fetch."
    )

    @model_validator(mode="after")
    def _exactly_one(self) -> "ImageSource":
        if (self.file_id is None) == (self.url is None):
            raise ValueError("give exactly one of file_id or url")
        return self


ImageFormat = Literal["jpeg", "png", "webp", "avif"]


class ResizeOp(Contract):
    """Scale to a width and/or height; aspect ratio kept unless `keep_aspect` is false."""

    op: Literal["resize"]
    width: int | None = Field(default=None, ge=1, le=20_000, description="Target width in px.")
    height: int | None = Field(default=None, ge=1, le=20_000, description="Target height in px.")
    keep_aspect: bool = Field(default=True, description="Fit inside width×height, keeping ratio.")

    @model_validator(mode="after")
    def _some_size(self) -> "ResizeOp":
        if self.width is None and self.height is None:
            raise ValueError("resize needs width, height or both")
        return self


class FitOp(Contract):
    """Make the image exactly width×height: `cover` crops, `contain` pads."""

    op: Literal["fit"]
    width: int = Field(ge=1, le=20_000, description="Output width in px.")
    height: int = Field(ge=1, le=20_000, description="Output height in px.")
    mode: Literal["cover", "contain"] = Field(default="cover", description="Crop or pad.")
    background: str = Field(
        default="#ffffff", pattern=r"^#[0-9a-fA-F]{6}$", description="Pad colour for `contain`."
    )


class CropOp(Contract):
    """Cut out the box (left, top, right, bottom) in pixels."""

    op: Literal["crop"]
    left: int = Field(ge=0, description="Left edge.")
    top: int = Field(ge=0, description="Top edge.")
    right: int = Field(ge=1, description="Right edge (exclusive).")
    bottom: int = Field(ge=1, description="Bottom edge (exclusive).")

    @model_validator(mode="after")
    def _positive_box(self) -> "CropOp":
        if self.right <= self.left or self.bottom <= self.top:
            raise ValueError("crop box must have right > left and bottom > top")
        return self


class RotateOp(Contract):
    """Rotate counter-clockwise by `degrees`, expanding the canvas."""

    op: Literal["rotate"]
    degrees: float = Field(gt=-360, lt=360, description="Angle, counter-clockwise.")


class AutoOrientOp(Contract):
    """Apply the EXIF orientation tag, then drop it."""

    op: Literal["auto_orient"]


class StripMetadataOp(Contract):
    """Drop EXIF, ICC and other metadata from every output.

    An output setting: wherever it appears in the list, it applies to the main
    output and the thumbnails. Without it, EXIF and the ICC profile are kept.
    """

    op: Literal["strip_metadata"]


class ConvertOp(Contract):
    """Choose the output format.

    An output setting: wherever it appears in the list, the last one applies
    to the main output and to thumbnails that do not choose their own. Without
    it, a jpeg, png, webp or avif source keeps its format; others become png.
    """

    op: Literal["convert"]
    format: ImageFormat = Field(description="Output format.")


class QualityOp(Contract):
    """Output quality (jpeg, webp, avif) or compression level (png, 0–9).

    An output setting like `convert`: the last one applies to every output.
    """

    op: Literal["quality"]
    quality: int = Field(
        ge=1,
        le=100,
        description="1–100; png uses it as zlib compression level min(9, quality // 10).",
    )


class ThumbnailSize(Contract):
    """One thumbnail's bounding box."""

    width: int = Field(ge=1, le=4_000, description="Max width in px.")
    height: int = Field(ge=1, le=4_000, description="Max height in px.")


class ThumbnailsOp(Contract):
    """Several thumbnails of the image as it is at this point; one output file each.

    Each keeps the aspect ratio inside its box and is never larger than the image.
    """

    op: Literal["thumbnails"]
    sizes: list[ThumbnailSize] = Field(min_length=1, max_length=20, description="Bounding boxes.")
    format: ImageFormat | None = Field(
        default=None, description="The thumbnails' format; the main output's format when absent."
    )


AnyImageOperation = (
    ResizeOp
    | FitOp
    | CropOp
    | RotateOp
    | AutoOrientOp
    | StripMetadataOp
    | ConvertOp
    | QualityOp
    | ThumbnailsOp
)
"""Every image operation (a plain union, for code that dispatches on the operation)."""

ImageOperation = Annotated[AnyImageOperation, Field(discriminator="op")]
"""An image operation in a request, chosen by its `op`."""


class ImageProcessInput(Contract):
    """A Pillow pipeline: the operations are applied in order."""

    source: ImageSource = Field(description="The image to process.")
    operations: list[ImageOperation] = Field(
        default_factory=list, max_length=50, description="Applied in order."
    )


class ImageOutput(Contract):
    """One stored output image."""

    file: FileRef = Field(description="The stored image.")
    width: int = Field(ge=1, description="Width in px.")
    height: int = Field(ge=1, description="Height in px.")
    format: str = Field(description="Format name (jpeg, png, webp, avif).")


class ImageProcessResult(Contract):
    """The processed image, and the thumbnails when some were asked for."""

    file: FileRef = Field(description="The main output image.")
    width: int = Field(ge=1, description="Width in px.")
    height: int = Field(ge=1, description="Height in px.")
    format: str = Field(description="Format name.")
    files: list[ImageOutput] = Field(default_factory=list, description="Thumbnails, in order.")


# --------------------------------------------------------------------------- envelope


class TraceContext(Contract):
    """W3C trace context carried with the job so a trace spans gateway and worker."""

    traceparent: str | None = Field(default=None, max_length=256, description="W3C traceparent.")
    tracestate: str | None = Field(default=None, max_length=512, description="W3C tracestate.")


InputT = TypeVar("InputT", bound=Contract)
ResultT = TypeVar("ResultT", bound=Contract)


PayloadT = TypeVar("PayloadT")
"""Unbound on purpose: the bare envelope (`JobRequestBase` itself) takes any `input`, so
a message of a type this process does not know can still have its envelope checked."""


class JobRequestBase(Contract, Generic[PayloadT]):
    """Fields every job request carries, whatever its type.

    Each job type's request model (`JobSpec.request`) narrows `type` to its name
    and `input` to its input model.
    """

    id: str = Field(pattern=r"^[A-Za-z0-9_-]{1,64}$", description="Job id.")
    tenant: str = Field(min_length=1, max_length=128, description="Owning tenant.")
    attempt: int = Field(default=1, ge=1, description="This delivery's attempt number, from 1.")
    max_attempts: int = Field(ge=1, description="Attempts allowed before the job fails for good.")
    created_at: datetime = Field(description="When the gateway accepted the job.")
    trace: TraceContext = Field(default_factory=TraceContext, description="Trace context.")
    type: str
    input: PayloadT


# --------------------------------------------------------------------------- policy


class JobPolicy(Contract):
    """How a job type is run: attempts and the per-attempt timeout."""

    max_attempts: int = Field(ge=1, description="Attempts before the job fails for good.")
    timeout_s: float = Field(gt=0, description="Per-attempt time limit; a timeout is transient.")


# --------------------------------------------------------------------------- spec


@dataclass(frozen=True, eq=False)
class JobSpec(Generic[InputT, ResultT]):
    """A job type, declared once: everything else about it derives from this.

    The request message (`request`), the gateway's submission model and its
    OpenAPI example, the AsyncAPI documents, the topology (which service's queue
    takes the type) and the worker's policy all read it. Retry delays are not
    per type: they are the retry queues of the deployment (`OFFLOAD_RETRY_TIERS`).
    """

    type: str
    """The job type, e.g. `image.process`: the routing key on the `jobs` exchange."""
    service: str
    """The service that consumes it: its queue is `<service>.jobs`, bound to `<service>.#`."""
    input: builtins.type[InputT]
    result: builtins.type[ResultT]
    policy: JobPolicy
    summary: str
    """What a job of this type does, in a few words (docstrings, OpenAPI)."""
    example: dict[str, Any]
    """An example body of `POST /v1/jobs` (`type`, `input`, optionally `webhook`)."""
    example_summary: str = ""
    """The example's one-line title in the OpenAPI document (`summary` when empty)."""
    request: builtins.type[JobRequestBase[InputT]] = field(init=False, repr=False)
    """The message on the `jobs` exchange: the envelope with this `type` and `input`."""

    def __post_init__(self) -> None:
        if not self.type.startswith(f"{self.service}."):
            raise ValueError(
                f"job type {self.type!r} must start with its service's name ({self.service}.): "
                f"the queue `{self.service}.jobs` is bound to `{self.service}.#`"
            )
        if self.example.get("type") != self.type:
            raise ValueError(f"the example of {self.type!r} must have type {self.type!r}")
        literal: Any = Literal[self.type]
        request: builtins.type[JobRequestBase[InputT]] = create_model(
            f"{model_name(self.type)}Request",
            __base__=JobRequestBase,
            __module__=self.input.__module__,
            __doc__=f"Request for `{self.type}`.",
            type=(literal, self.type),
            input=(self.input, ...),
        )
        object.__setattr__(self, "request", request)


def model_name(job_type: str) -> str:
    """`image.process` → `ImageProcess`: the stem of the type's generated model names."""
    return "".join(part.capitalize() for part in re.split(r"[._-]", job_type) if part)


# --------------------------------------------------------------------------- the built-in types

# The four specs share one shape on purpose: each is data, the one declaration of
# its type, and a reader compares them field by field.

AI_GENERATE: JobSpec[AiGenerateInput, AiGenerateResult] = JobSpec(
    type="ai.generate",
    service="ai",
    input=AiGenerateInput,
    result=AiGenerateResult,
    policy=JobPolicy(max_attempts=3, timeout_s=120),
    summary="one LLM completion",
    example={
        "type": "ai.generate",
        "input": {"prompt": "Write a haiku about queues.", "max_tokens": 64},
    },
)
RESEARCH_RUN: JobSpec[ResearchRunInput, ResearchRunResult] = JobSpec(
    type="research.run",
    service="research",
    input=ResearchRunInput,
    result=ResearchRunResult,
    policy=JobPolicy(max_attempts=3, timeout_s=600),
    summary="plan, sub-answers, synthesis",
    example={
        "type": "research.run",
        "input": {"question": "How do quorum queues replicate?", "steps": 3},
    },
    example_summary="a chained research report",
)
VIDEO_GENERATE: JobSpec[VideoGenerateInput, VideoGenerateResult] = JobSpec(
    type="video.generate",
    service="video",
    input=VideoGenerateInput,
    result=VideoGenerateResult,
    policy=JobPolicy(max_attempts=5, timeout_s=900),
    summary="render with the provider, then store the file",
    example={
        "type": "video.generate",
        "input": {"prompt": "A paper boat on a river", "duration_s": 5, "resolution": "720p"},
        "webhook": {"url": "https://example.com/hooks/offload", "events": ["completed"]},
    },
    example_summary="a rendered video, with a webhook",
)
IMAGE_PROCESS: JobSpec[ImageProcessInput, ImageProcessResult] = JobSpec(
    type="image.process",
    service="image",
    input=ImageProcessInput,
    result=ImageProcessResult,
    policy=JobPolicy(max_attempts=3, timeout_s=60),
    summary="a Pillow pipeline over an uploaded file or a URL",
    example={
        "type": "image.process",
        "input": {
            "source": {"file_id": "3f2a9c0d4b1e4f6a8c7d5e3b2a1f0e9d"},
            "operations": [
                {"op": "resize", "width": 1280},
                {"op": "convert", "format": "webp"},
                {"op": "thumbnails", "sizes": [{"width": 200, "height": 200}]},
            ],
        },
    },
    example_summary="resize an uploaded image to WebP, with thumbnails",
)

BUILTIN_SPECS: tuple[JobSpec[Any, Any], ...] = (
    AI_GENERATE,
    RESEARCH_RUN,
    VIDEO_GENERATE,
    IMAGE_PROCESS,
)
"""Offload's own job types (DESIGN §2); a deployment adds its own (`catalog.JobCatalog`).

Every timeout stays below RabbitMQ's 30 min consumer timeout."""

# The built-in request models by name, for code and tests that construct them.
AiGenerateRequest = AI_GENERATE.request
ResearchRunRequest = RESEARCH_RUN.request
VideoGenerateRequest = VIDEO_GENERATE.request
ImageProcessRequest = IMAGE_PROCESS.request

SPECS: dict[str, JobSpec[Any, Any]] = {spec.type: spec for spec in BUILTIN_SPECS}
INPUT_MODELS: dict[str, type[Contract]] = {t: spec.input for t, spec in SPECS.items()}
RESULT_MODELS: dict[str, type[Contract]] = {t: spec.result for t, spec in SPECS.items()}
REQUEST_MODELS: dict[str, type[JobRequestBase[Any]]] = {
    t: spec.request for t, spec in SPECS.items()
}
POLICIES: dict[str, JobPolicy] = {t: spec.policy for t, spec in SPECS.items()}

_request_union: Any = Union[tuple(REQUEST_MODELS.values())]  # noqa: UP007
JobRequest = Annotated[_request_union, Field(discriminator="type")]
"""The message on the `jobs` exchange for a built-in type, chosen by `type`."""

JOB_REQUEST_ADAPTER: TypeAdapter[Any] = TypeAdapter(JobRequest)
