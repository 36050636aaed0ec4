"""The video service's job handlers: decode, call the domain, return."""

from offload_contracts import VIDEO_GENERATE
from offload_runtime.runner import JobHandler
from offload_runtime.worker import job_handler
from offload_video.generation import VideoGenerator, VideoRequest


def on_video_generate(generator: VideoGenerator) -> JobHandler[VideoRequest]:
    """`video.generate` → `VideoGenerator.run`; a job cancelled between attempts is cleaned up."""
    return job_handler(VIDEO_GENERATE, generator.run, on_cancelled=generator.cancelled)
