"""The download is streamed: the partial file grows while bytes arrive, memory stays flat."""

import asyncio
import re
from pathlib import Path

from offload_contracts import JobStatus
from tests.support.infra import Infra
from tests.support.sandbox import running_sandbox
from tests.support.video import VideoRig
from tests.support.waiting import wait_until

MB = 1_000_000


def _status_kb(field: str) -> int:
    text = Path("/proc/self/status").read_text()
    match = re.search(rf"^{field}:\s+(\d+) kB", text, re.MULTILINE)
    assert match, f"{field} missing from /proc/self/status"
    return int(match.group(1))


def _reset_peak_rss() -> bool:
    """Reset VmHWM (Linux ≥ 4.0); False where the kernel does not allow it."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


async def test_the_download_is_written_progressively_with_flat_memory(
    infra: Infra, tmp_path: Path
) -> None:
    size = 48 * MB
    async with running_sandbox(
        sandbox_video_render_s=0,
        sandbox_video_bytes_per_second=MB,
        sandbox_video_download_bytes_per_second=32 * MB,  # 1.5 s: time to watch the file
    ) as sandbox:
        rig = VideoRig(infra, sandbox.base_url, tmp_path)
        await rig.start()
        try:
            baseline_kb = _status_kb("VmRSS")
            can_reset = await asyncio.to_thread(_reset_peak_rss)
            job = await rig.submit(duration_s=48)
            partial = rig.partial_dir / f"{job.id}.part"
            sizes: list[int] = []

            async def finished() -> bool:
                record = await rig.store.get(job.id)
                if record is not None and record.status.is_terminal:
                    return True
                if partial.exists():
                    sizes.append(partial.stat().st_size)
                return False

            await wait_until(finished, timeout=60, what=f"job {job.id} finished", interval=0.02)
            peak_kb = _status_kb("VmHWM")
            record = await rig.wait_status(job.id, {JobStatus.COMPLETED})
        finally:
            await rig.close()

    assert record.result is not None and record.result["file"]["bytes"] == size
    growing = sorted(set(s for s in sizes if 0 < s < size))
    assert len(growing) >= 5, f"partial file sizes seen: {growing}"
    assert sizes == sorted(sizes)  # only ever appended to
    if can_reset:
        growth_mb = (peak_kb - baseline_kb) * 1024 / MB
        print(f"peak RSS growth {growth_mb:.1f} MB for a {size / MB:.0f} MB download")
        assert growth_mb < size / MB / 3  # a buffered download would grow by ~48 MB
