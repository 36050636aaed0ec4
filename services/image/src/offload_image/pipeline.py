"""The image pipeline: pure Pillow, from one source file to output files.

`render` runs inside a pool process (see `adapters/pool.py`): it reads the
source from a path, applies the operations in order, and writes every output
into a directory, returning only small metadata. Nothing here knows about the
broker, Redis or HTTP, so the whole pipeline is unit-tested on small images.

Rules it applies (the contract's docstrings say the same to clients):

- `convert`, `quality` and `strip_metadata` are output settings: wherever they
  appear, the last one applies to every output.
- Every other operation transforms the working image in order; `thumbnails`
  encodes thumbnails of the image as it is at that point.
- EXIF and the ICC profile are carried to the outputs unless stripped;
  `auto_orient` applies the EXIF orientation and removes the tag.
- Bad input raises `PermanentError` with a message a user can act on; no
  operation may produce more pixels than the configured limit.
"""

import hashlib
import io
import math
import struct
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from PIL import Image, UnidentifiedImageError, features

from offload_contracts.jobs import (
    AnyImageOperation,
    AutoOrientOp,
    ConvertOp,
    CropOp,
    FitOp,
    ImageFormat,
    QualityOp,
    ResizeOp,
    RotateOp,
    StripMetadataOp,
    ThumbnailsOp,
)
from offload_runtime.errors import PermanentError, TransientError

Operation = AnyImageOperation

Report = Callable[[float, str], None]
"""Progress callback: percent (0–100) and a short message."""

SOURCE_FORMATS: dict[str, str] = {
    "JPEG": "jpeg",
    "MPO": "jpeg",  # phones write multi-picture JPEGs; the first picture is the photo
    "PNG": "png",
    "WEBP": "webp",
    "AVIF": "avif",
    "GIF": "gif",
    "BMP": "bmp",
    "TIFF": "tiff",
}
"""Pillow format name → the name Offload reports, for every source format accepted."""


@dataclass(frozen=True, slots=True)
class OutputFormat:
    name: ImageFormat
    pillow: str
    content_type: str
    extension: str


OUTPUT_FORMATS: dict[str, OutputFormat] = {
    "jpeg": OutputFormat("jpeg", "JPEG", "image/jpeg", "jpg"),
    "png": OutputFormat("png", "PNG", "image/png", "png"),
    "webp": OutputFormat("webp", "WEBP", "image/webp", "webp"),
    "avif": OutputFormat("avif", "AVIF", "image/avif", "avif"),
}

DEFAULT_QUALITY: dict[str, int] = {"jpeg": 85, "webp": 80, "avif": 70}
PNG_DEFAULT_COMPRESS_LEVEL = 6
_JPEG_MAX_EXIF = 65533  # one APP1 segment, less its length field

# LANCZOS with a reducing gap: large downscales first shrink by an integer
# factor (fast box filter), then resample; Pillow documents the result as
# indistinguishable from plain LANCZOS at a fraction of the time.
_RESAMPLE = Image.Resampling.LANCZOS
_REDUCING_GAP = 3.0

_EXACT_TURNS: dict[float, Image.Transpose] = {
    90: Image.Transpose.ROTATE_90,
    180: Image.Transpose.ROTATE_180,
    270: Image.Transpose.ROTATE_270,
}
"""Right angles turn by transposing: exact, lossless and fast."""

_ORIENTATION_TAG = 0x0112
_ORIENTATION_TRANSPOSE: dict[int, Image.Transpose] = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


@dataclass(frozen=True, slots=True)
class RenderedImage:
    """One output written by the pipeline, with what the result needs to describe it."""

    role: Literal["main", "thumbnail"]
    path: Path
    width: int
    height: int
    format: ImageFormat
    content_type: str
    bytes: int
    sha256: str


@dataclass(frozen=True, slots=True)
class OutputSettings:
    """The output settings gathered from the whole operation list (last one wins)."""

    format: ImageFormat | None = None
    quality: int | None = None
    strip_metadata: bool = False


def output_settings(operations: Sequence[Operation]) -> OutputSettings:
    """Collect `convert`, `quality` and `strip_metadata`, wherever they appear."""
    fmt: ImageFormat | None = None
    quality: int | None = None
    strip = False
    for op in operations:
        if isinstance(op, ConvertOp):
            fmt = op.format
        elif isinstance(op, QualityOp):
            quality = op.quality
        elif isinstance(op, StripMetadataOp):
            strip = True
    return OutputSettings(format=fmt, quality=quality, strip_metadata=strip)


def writable_formats() -> frozenset[str]:
    """Output formats this Pillow build can encode (AVIF and WebP depend on the build)."""
    names = {"jpeg", "png"}
    names.update(name for name in ("webp", "avif") if features.check(name))
    return frozenset(names)


@dataclass
class _Metadata:
    exif: Image.Exif
    icc_profile: bytes | None


def _ignore(percent: float, message: str) -> None:
    return None


def render(
    source: Path,
    operations: Sequence[Operation],
    out_dir: Path,
    *,
    max_pixels: int,
    report: Report = _ignore,
) -> list[RenderedImage]:
    """Apply `operations` to the image at `source`; write the outputs into `out_dir`.

    Returns the main output first, then the thumbnails in the order asked.
    Raises `PermanentError` for input that can never work.
    """
    settings = output_settings(operations)
    steps = 2 + sum(1 for op in operations if not _is_output_setting(op))
    done = 0

    def step(message: str) -> None:
        nonlocal done
        done += 1
        report(100 * done / steps, message)

    with warnings.catch_warnings():
        # A slightly damaged EXIF block is not worth failing or logging for; a
        # decompression bomb is (filters added later take precedence).
        warnings.simplefilter("ignore")
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            image, source_format, metadata = _load(source, max_pixels)
            step(f"decoded {source_format} {image.width}×{image.height}")
            target = _output_format(settings.format, source_format)
            outputs: list[RenderedImage] = []
            for op in operations:
                if _is_output_setting(op):
                    continue
                if isinstance(op, ThumbnailsOp):
                    thumb_format = _output_format(op.format, source_format) if op.format else target
                    for size in op.sizes:
                        thumb = _thumbnail(image, size.width, size.height)
                        outputs.append(
                            _write(
                                thumb,
                                "thumbnail",
                                out_dir / f"thumb-{len(outputs) + 1}.{thumb_format.extension}",
                                thumb_format,
                                settings,
                                metadata,
                            )
                        )
                    step(f"made {len(op.sizes)} thumbnails")
                    continue
                image = _apply(image, op, metadata, max_pixels)
                step(f"{op.op} → {image.width}×{image.height}")
            main = _write(
                image, "main", out_dir / f"main.{target.extension}", target, settings, metadata
            )
            step(f"encoded {target.name}")
        except MemoryError as exc:
            # The process survived, so another attempt (with less else in memory) may pass.
            raise TransientError("ran out of memory while processing the image") from exc
    return [main, *outputs]


def _is_output_setting(op: Operation) -> bool:
    return isinstance(op, ConvertOp | QualityOp | StripMetadataOp)


# ------------------------------------------------------------------------- loading


def _load(source: Path, max_pixels: int) -> tuple[Image.Image, str, _Metadata]:
    try:
        opened = Image.open(source)
    except UnidentifiedImageError as exc:
        raise PermanentError(
            "the source is not an image Offload can read "
            f"(accepted: {', '.join(sorted(set(SOURCE_FORMATS.values())))})"
        ) from exc
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise PermanentError(
            f"the source image has more pixels than the limit of {max_pixels:,} "
            "(decompression bomb protection)"
        ) from exc
    with opened:
        pillow_format = opened.format or "unknown"
        if pillow_format not in SOURCE_FORMATS:
            raise PermanentError(
                f"unsupported source format {pillow_format}; accepted: "
                f"{', '.join(sorted(set(SOURCE_FORMATS.values())))}"
            )
        width, height = opened.size
        # Checked on the header, before a single pixel is decoded.
        _check_pixels(width, height, max_pixels, "the source image")
        try:
            opened.load()
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise PermanentError(
                f"the source image has more pixels than the limit of {max_pixels:,} "
                "(decompression bomb protection)"
            ) from exc
        except OSError as exc:
            if exc.errno is not None:
                raise  # a real I/O error (disk, NFS): transient, the runner retries
            raise PermanentError(f"the source image is truncated or corrupt ({exc})") from exc
        except (SyntaxError, ValueError, EOFError, IndexError, struct.error) as exc:
            raise PermanentError(f"the source image is corrupt ({exc})") from exc
        image = _normalise_mode(opened)
        metadata = _metadata_of(opened, converted_from_cmyk=opened.mode == "CMYK")
    # Metadata travels in `_Metadata`, never implicitly in `info`: some encoders
    # fall back to `image.info` for the ICC profile or EXIF, which would defeat
    # `strip_metadata`.
    image.info = {}
    return image, SOURCE_FORMATS[pillow_format], metadata


def _normalise_mode(image: Image.Image) -> Image.Image:
    """Bring any source mode to one of L, LA, RGB, RGBA, which every operation handles well."""
    mode = image.mode
    if mode in ("L", "LA", "RGB", "RGBA"):
        return image
    if mode in ("P", "PA"):
        has_alpha = mode == "PA" or "transparency" in image.info
        return image.convert("RGBA" if has_alpha else "RGB")
    if mode == "1":
        return image.convert("L")
    if mode.startswith("I;16") or mode in ("I", "F"):
        # 16-bit and float greyscale: scale to 8 bits (a plain convert clips at 255).
        wide = image.convert("F") if mode != "F" else image
        peak = 65535.0
        if not mode.startswith("I;16"):
            top = wide.getextrema()[1]
            peak = max(1.0, float(top)) if isinstance(top, int | float) else 255.0
        return wide.point(lambda value: value * 255.0 / peak).convert("L")
    return image.convert("RGBA" if "A" in mode else "RGB")


def _metadata_of(image: Image.Image, *, converted_from_cmyk: bool) -> _Metadata:
    try:
        exif = image.getexif()
    except Exception:  # a broken EXIF block: the image itself is still fine
        exif = Image.Exif()
    icc = image.info.get("icc_profile")
    if converted_from_cmyk:
        icc = None  # a CMYK profile would mislabel the RGB pixels
    return _Metadata(exif=exif, icc_profile=icc if isinstance(icc, bytes) and icc else None)


# ---------------------------------------------------------------------- operations


def _check_pixels(width: int, height: int, max_pixels: int, what: str) -> None:
    if width * height > max_pixels:
        raise PermanentError(
            f"{what} would be {width}×{height} = {width * height:,} pixels, over the limit of "
            f"{max_pixels:,} (decompression bomb protection)"
        )


def _apply(image: Image.Image, op: Operation, metadata: _Metadata, max_pixels: int) -> Image.Image:
    if isinstance(op, ResizeOp):
        size = _resize_size(image.size, op)
        _check_pixels(*size, max_pixels, "the resized image")
        return _resized(image, size)
    if isinstance(op, FitOp):
        _check_pixels(op.width, op.height, max_pixels, "the fitted image")
        return _fit(image, op)
    if isinstance(op, CropOp):
        width, height = image.size
        if op.right > width or op.bottom > height:
            raise PermanentError(
                f"crop box ({op.left}, {op.top}, {op.right}, {op.bottom}) lies outside the "
                f"{width}×{height} image"
            )
        return image.crop((op.left, op.top, op.right, op.bottom))
    if isinstance(op, RotateOp):
        return _rotate(image, op.degrees, max_pixels)
    if isinstance(op, AutoOrientOp):
        return _auto_orient(image, metadata)
    raise PermanentError(f"unknown operation {op.op!r}")  # pragma: no cover - contract guards


def _resize_size(size: tuple[int, int], op: ResizeOp) -> tuple[int, int]:
    width, height = size
    if not op.keep_aspect:
        return (op.width or width, op.height or height)
    scales = []
    if op.width is not None:
        scales.append(op.width / width)
    if op.height is not None:
        scales.append(op.height / height)
    scale = min(scales)
    return (max(1, round(width * scale)), max(1, round(height * scale)))


def _resized(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    if size == image.size:
        return image
    gap = _REDUCING_GAP if size[0] < image.width and size[1] < image.height else None
    return image.resize(size, _RESAMPLE, reducing_gap=gap)


def _fit(image: Image.Image, op: FitOp) -> Image.Image:
    width, height = image.size
    if op.mode == "cover":
        scale = max(op.width / width, op.height / height)
        scaled = _resized(
            image, (max(op.width, round(width * scale)), max(op.height, round(height * scale)))
        )
        left = (scaled.width - op.width) // 2
        top = (scaled.height - op.height) // 2
        return scaled.crop((left, top, left + op.width, top + op.height))
    scale = min(op.width / width, op.height / height)
    inner = _resized(image, (max(1, round(width * scale)), max(1, round(height * scale))))
    canvas = Image.new(image.mode, (op.width, op.height), _opaque(op.background, image.mode))
    canvas.paste(inner, ((op.width - inner.width) // 2, (op.height - inner.height) // 2))
    return canvas


def _opaque(colour: str, mode: str) -> tuple[int, ...] | int:
    red, green, blue = (int(colour[i : i + 2], 16) for i in (1, 3, 5))
    if mode in ("L", "LA"):
        grey = round(0.299 * red + 0.587 * green + 0.114 * blue)
        return (grey, 255) if mode == "LA" else grey
    return (red, green, blue, 255) if mode == "RGBA" else (red, green, blue)


def _rotate(image: Image.Image, degrees: float, max_pixels: int) -> Image.Image:
    turn = degrees % 360
    if turn == 0:
        return image
    if turn in _EXACT_TURNS:
        return image.transpose(_EXACT_TURNS[turn])
    radians = math.radians(turn)
    width = math.ceil(abs(image.width * math.cos(radians)) + abs(image.height * math.sin(radians)))
    height = math.ceil(abs(image.width * math.sin(radians)) + abs(image.height * math.cos(radians)))
    _check_pixels(width, height, max_pixels, "the rotated image")
    # The uncovered corners become transparent; formats without alpha get white.
    with_alpha = image if image.mode in ("LA", "RGBA") else image.convert(image.mode + "A")
    return with_alpha.rotate(turn, Image.Resampling.BICUBIC, expand=True)


def _auto_orient(image: Image.Image, metadata: _Metadata) -> Image.Image:
    orientation = metadata.exif.get(_ORIENTATION_TAG)
    if _ORIENTATION_TAG in metadata.exif:
        del metadata.exif[_ORIENTATION_TAG]
    method = _ORIENTATION_TRANSPOSE.get(orientation) if isinstance(orientation, int) else None
    return image.transpose(method) if method is not None else image


def _thumbnail(image: Image.Image, width: int, height: int) -> Image.Image:
    scale = min(width / image.width, height / image.height, 1.0)
    size = (
        min(width, max(1, round(image.width * scale))),
        min(height, max(1, round(image.height * scale))),
    )
    return _resized(image, size)


# ------------------------------------------------------------------------- writing


def _output_format(wanted: str | None, source_format: str) -> OutputFormat:
    name = wanted or (source_format if source_format in OUTPUT_FORMATS else "png")
    if name not in writable_formats():
        raise PermanentError(f"{name} output is not supported by this deployment's Pillow")
    return OUTPUT_FORMATS[name]


def _write(
    image: Image.Image,
    role: Literal["main", "thumbnail"],
    path: Path,
    fmt: OutputFormat,
    settings: OutputSettings,
    metadata: _Metadata,
) -> RenderedImage:
    prepared = _for_format(image, fmt.name)
    options: dict[str, object] = {}
    if fmt.name == "png":
        options["compress_level"] = (
            min(9, settings.quality // 10)
            if settings.quality is not None
            else PNG_DEFAULT_COMPRESS_LEVEL
        )
    else:
        options["quality"] = settings.quality or DEFAULT_QUALITY[fmt.name]
    if not settings.strip_metadata:
        exif = _exif_bytes(metadata.exif, fmt.name)
        if exif:
            options["exif"] = exif
        if metadata.icc_profile:
            options["icc_profile"] = metadata.icc_profile
    buffer = io.BytesIO()
    prepared.save(buffer, fmt.pillow, **options)
    data = buffer.getbuffer()
    path.write_bytes(data)
    return RenderedImage(
        role=role,
        path=path,
        width=prepared.width,
        height=prepared.height,
        format=fmt.name,
        content_type=fmt.content_type,
        bytes=len(data),
        sha256=hashlib.sha256(data).hexdigest(),
    )


def _exif_bytes(exif: Image.Exif, fmt: str) -> bytes | None:
    """The EXIF block to write, or None when there is none or it cannot be written.

    Metadata is carried over on a best-effort basis: a block Pillow cannot
    serialise, or one too long for a JPEG APP1 segment, is dropped rather than
    failing the image.
    """
    if not len(exif):
        return None
    try:
        data = exif.tobytes()
    except Exception:
        return None
    if fmt == "jpeg" and len(data) > _JPEG_MAX_EXIF:
        return None
    return data


def _for_format(image: Image.Image, fmt: str) -> Image.Image:
    """Convert to a mode the encoder accepts; alpha is flattened onto white for jpeg."""
    if fmt == "jpeg":
        if image.mode in ("RGBA", "LA"):
            flat = Image.new(image.mode[:-1], image.size, 255 if image.mode == "LA" else (255,) * 3)
            flat.paste(image, mask=image.getchannel("A"))
            return flat
        return image
    if fmt in ("webp", "avif") and image.mode in ("L", "LA"):
        return image.convert("RGBA" if image.mode == "LA" else "RGB")
    return image
