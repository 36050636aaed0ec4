"""The heavy work the benchmarks put on a system: job bodies and a large source image."""

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

IMAGE_OPERATIONS: list[dict[str, Any]] = [
    {"op": "resize", "width": 1920},
    {"op": "thumbnails", "sizes": [{"width": 320, "height": 320}, {"width": 160, "height": 160}]},
    {"op": "convert", "format": "webp"},
    {"op": "quality", "quality": 80},
]
"""What a product does with an uploaded photo: a web-size copy and two thumbnails, as WebP."""


@dataclass(frozen=True)
class HeavyLoad:
    """How many heavy jobs of each type, submitted at once."""

    llm_jobs: int = 100
    image_jobs: int = 20
    research_jobs: int = 10
    research_steps: int = 3

    def bodies(self, image_file_id: str) -> list[dict[str, Any]]:
        """`POST /v1/jobs` bodies, interleaved so every type is in flight from the start."""
        llm = [
            {
                "type": "ai.generate",
                "input": {"prompt": f"Write about topic {i}.", "max_tokens": 32},
            }
            for i in range(self.llm_jobs)
        ]
        images = [
            {
                "type": "image.process",
                "input": {"source": {"file_id": image_file_id}, "operations": IMAGE_OPERATIONS},
            }
            for _ in range(self.image_jobs)
        ]
        research = [
            {
                "type": "research.run",
                "input": {"question": f"What limits system {i}?", "steps": self.research_steps},
            }
            for i in range(self.research_jobs)
        ]
        mixed: list[dict[str, Any]] = []
        for i in range(max(len(llm), len(images), len(research))):
            for group in (images, research, llm):
                if i < len(group):
                    mixed.append(group[i])
        return mixed


def photo_like_jpeg(path: Path, width: int = 4000, height: int = 3000) -> bytes:
    """A JPEG with gradients and grain, so it decodes and encodes like a photo, not a flat fill."""
    if path.exists():
        return path.read_bytes()
    from PIL import Image

    red = Image.radial_gradient("L").resize((width, height))
    green = Image.linear_gradient("L").resize((width, height))
    grain = Image.effect_noise((width, height), 48)
    image = Image.merge("RGB", (red, green, grain))
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=90)
    data = buffer.getvalue()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return data
