"""The video service's job handler: decode (done by the runner), call the domain, return."""

from offload_contracts import POLICIES, VideoGenerateRequest, VideoGenerateResult
from offload_runtime.ports import JobContext
from offload_runtime.runner import JobHandler
from offload_video.generation import VideoGenerator


def video_handler(generator: VideoGenerator) -> JobHandler[VideoGenerateRequest]:
    """`video.generate` with its policy (5 attempts, 15 min per attempt)."""

    async def on_video_requested(
        request: VideoGenerateRequest, ctx: JobContext
    ) -> VideoGenerateResult:
        return await generator.run(request, ctx)

    return JobHandler(
        VideoGenerateRequest,
        on_video_requested,
        POLICIES["video.generate"],
        on_cancelled=generator.cancelled,
    )
