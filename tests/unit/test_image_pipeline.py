"""The Pillow pipeline on small generated images: every operation, metadata, formats, bad input."""

import io
import struct
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from PIL import Image, ImageCms

from offload_contracts import ImageProcessInput
from offload_image import pipeline
from offload_image.pipeline import RenderedImage
from offload_runtime.errors import PermanentError

RED, GREEN, BLUE, WHITE = (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255)
LIMIT = 50_000_000


def quadrants(width: int = 80, height: int = 60) -> Image.Image:
    """Red top-left, green top-right, blue bottom-left, white bottom-right."""
    image = Image.new("RGB", (width, height), WHITE)
    image.paste(RED, (0, 0, width // 2, height // 2))
    image.paste(GREEN, (width // 2, 0, width, height // 2))
    image.paste(BLUE, (0, height // 2, width // 2, height))
    return image


def save(image: Image.Image, path: Path, fmt: str = "PNG", **options: Any) -> Path:
    image.save(path, fmt, **options)
    return path


def ops(*operations: dict[str, Any]) -> list[Any]:
    """Operations validated by the contract, as the worker receives them."""
    job = ImageProcessInput.model_validate(
        {"source": {"file_id": "f"}, "operations": list(operations)}
    )
    return list(job.operations)


@pytest.fixture
def run(tmp_path: Path) -> Callable[..., list[RenderedImage]]:
    out = tmp_path / "out"
    out.mkdir()

    def _run(source: Path, *operations: dict[str, Any], **kwargs: Any) -> list[RenderedImage]:
        kwargs.setdefault("max_pixels", LIMIT)
        return pipeline.render(source, ops(*operations), out, **kwargs)

    return _run


def opened(result: RenderedImage) -> Image.Image:
    image = Image.open(result.path)
    image.load()
    return image


def near(pixel: Any, colour: tuple[int, ...], tolerance: int = 40) -> bool:
    return all(abs(a - b) <= tolerance for a, b in zip(pixel, colour, strict=False))


# ------------------------------------------------------------------- geometry


def test_resize_by_width_keeps_the_aspect_ratio(tmp_path: Path, run: Any) -> None:
    source = save(quadrants(80, 60), tmp_path / "s.png")
    [main] = run(source, {"op": "resize", "width": 40})
    assert (main.width, main.height) == (40, 30)
    assert opened(main).size == (40, 30)


def test_resize_into_a_box_keeps_the_aspect_ratio_inside_it(tmp_path: Path, run: Any) -> None:
    source = save(quadrants(80, 60), tmp_path / "s.png")
    [main] = run(source, {"op": "resize", "width": 100, "height": 30})
    assert opened(main).size == (40, 30)


def test_resize_without_keeping_the_aspect_ratio_stretches(tmp_path: Path, run: Any) -> None:
    source = save(quadrants(80, 60), tmp_path / "s.png")
    [main] = run(source, {"op": "resize", "width": 20, "height": 50, "keep_aspect": False})
    assert opened(main).size == (20, 50)


def test_fit_cover_fills_the_box_exactly_cropping_the_overflow(tmp_path: Path, run: Any) -> None:
    source = save(quadrants(80, 60), tmp_path / "s.png")
    [main] = run(source, {"op": "fit", "width": 30, "height": 30, "mode": "cover"})
    image = opened(main).convert("RGB")
    assert image.size == (30, 30)
    # Centre crop of a 4:3 image into a square keeps all four quadrants.
    assert near(image.getpixel((2, 2)), RED) and near(image.getpixel((27, 27)), WHITE)


def test_fit_contain_pads_with_the_background_colour(tmp_path: Path, run: Any) -> None:
    source = save(quadrants(80, 40), tmp_path / "s.png")
    [main] = run(
        source, {"op": "fit", "width": 40, "height": 40, "mode": "contain", "background": "#00ff00"}
    )
    image = opened(main).convert("RGB")
    assert image.size == (40, 40)
    assert image.getpixel((20, 1)) == GREEN  # padding band above the 40×20 picture
    assert near(image.getpixel((2, 12)), RED)


def test_crop_cuts_out_the_box(tmp_path: Path, run: Any) -> None:
    source = save(quadrants(80, 60), tmp_path / "s.png")
    [main] = run(source, {"op": "crop", "left": 40, "top": 0, "right": 80, "bottom": 30})
    image = opened(main).convert("RGB")
    assert image.size == (40, 30)
    assert image.getpixel((0, 0)) == GREEN and image.getpixel((39, 29)) == GREEN


def test_a_crop_box_outside_the_image_is_a_permanent_error(tmp_path: Path, run: Any) -> None:
    source = save(quadrants(80, 60), tmp_path / "s.png")
    with pytest.raises(PermanentError, match=r"crop box \(0, 0, 100, 60\) lies outside the 80×60"):
        run(source, {"op": "crop", "left": 0, "top": 0, "right": 100, "bottom": 60})


def test_rotate_90_turns_counter_clockwise(tmp_path: Path, run: Any) -> None:
    source = save(quadrants(80, 60), tmp_path / "s.png")
    [main] = run(source, {"op": "rotate", "degrees": 90})
    image = opened(main).convert("RGB")
    assert image.size == (60, 80)
    # Counter-clockwise: the top-right (green) corner moves to the top-left.
    assert image.getpixel((0, 0)) == GREEN and image.getpixel((0, 79)) == RED


def test_rotate_by_an_odd_angle_expands_with_transparent_or_white_corners(
    tmp_path: Path, run: Any
) -> None:
    source = save(Image.new("RGB", (100, 100), BLUE), tmp_path / "s.png")
    [png] = run(source, {"op": "rotate", "degrees": 45})
    image = opened(png)
    assert image.size[0] in range(141, 144) and image.mode == "RGBA"
    assert image.getpixel((1, 1))[3] == 0
    [jpeg] = run(source, {"op": "rotate", "degrees": 45}, {"op": "convert", "format": "jpeg"})
    assert near(opened(jpeg).getpixel((1, 1)), WHITE, 10)


def test_an_operation_that_would_exceed_the_pixel_limit_is_refused(
    tmp_path: Path, run: Any
) -> None:
    source = save(quadrants(80, 60), tmp_path / "s.png")
    with pytest.raises(PermanentError, match=r"resized image would be 8000×6000 .* over the limit"):
        run(source, {"op": "resize", "width": 8000}, max_pixels=1_000_000)


# ------------------------------------------------------------------- metadata


def exif_with(orientation: int) -> Image.Exif:
    exif = Image.Exif()
    exif[0x0112] = orientation
    exif[0x010F] = "OffloadCam"  # Make
    return exif


def test_auto_orient_applies_the_exif_orientation_and_drops_the_tag(
    tmp_path: Path, run: Any
) -> None:
    # Orientation 6: the camera was turned; viewers rotate 90° clockwise to display it.
    source = save(quadrants(80, 60), tmp_path / "s.jpg", "JPEG", exif=exif_with(6))
    [main] = run(source, {"op": "auto_orient"})
    image = opened(main).convert("RGB")
    assert image.size == (60, 80)
    assert near(image.getpixel((59, 0)), RED)  # red top-left went to the top-right
    exif = opened(main).getexif()
    assert 0x0112 not in exif
    assert exif[0x010F] == "OffloadCam"  # the rest of the EXIF is kept


def test_without_auto_orient_the_orientation_tag_is_kept(tmp_path: Path, run: Any) -> None:
    source = save(quadrants(80, 60), tmp_path / "s.jpg", "JPEG", exif=exif_with(6))
    [main] = run(source, {"op": "resize", "width": 40})
    assert opened(main).size == (40, 30)
    assert opened(main).getexif()[0x0112] == 6


def test_strip_metadata_drops_exif_and_icc_from_every_output(tmp_path: Path, run: Any) -> None:
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    source = save(quadrants(), tmp_path / "s.jpg", "JPEG", exif=exif_with(1), icc_profile=icc)

    [kept, kept_thumb] = run(source, {"op": "thumbnails", "sizes": [{"width": 20, "height": 20}]})
    for result in (kept, kept_thumb):
        assert opened(result).info.get("icc_profile") == icc
        assert opened(result).getexif()[0x010F] == "OffloadCam"

    # strip_metadata is an output setting: it applies even though it comes last.
    [main, thumb] = run(
        source,
        {"op": "thumbnails", "sizes": [{"width": 20, "height": 20}]},
        {"op": "strip_metadata"},
    )
    for result in (main, thumb):
        assert "icc_profile" not in opened(result).info
        assert len(opened(result).getexif()) == 0


# ------------------------------------------------------------------- thumbnails and formats


def test_thumbnails_are_one_file_each_inside_their_box_never_upscaled(
    tmp_path: Path, run: Any
) -> None:
    source = save(quadrants(400, 300), tmp_path / "s.jpg", "JPEG")
    main, *thumbs = run(
        source,
        {
            "op": "thumbnails",
            "sizes": [
                {"width": 200, "height": 200},
                {"width": 64, "height": 64},
                {"width": 1000, "height": 1000},
            ],
        },
        {"op": "resize", "width": 100},
    )
    assert [(t.width, t.height) for t in thumbs] == [(200, 150), (64, 48), (400, 300)]
    assert [opened(t).size for t in thumbs] == [(200, 150), (64, 48), (400, 300)]
    assert len({t.path for t in thumbs}) == 3
    assert all(t.role == "thumbnail" for t in thumbs) and main.role == "main"
    # Taken before the resize that follows them; the main output has it.
    assert opened(main).size == (100, 75)


def test_thumbnails_follow_the_output_format_unless_they_choose_their_own(
    tmp_path: Path, run: Any
) -> None:
    source = save(quadrants(), tmp_path / "s.png")
    _, same = run(
        source,
        {"op": "thumbnails", "sizes": [{"width": 20, "height": 20}]},
        {"op": "convert", "format": "webp"},
    )
    assert (same.format, opened(same).format) == ("webp", "WEBP")
    main, own = run(
        source,
        {"op": "thumbnails", "sizes": [{"width": 20, "height": 20}], "format": "jpeg"},
        {"op": "convert", "format": "webp"},
    )
    assert opened(main).format == "WEBP"
    assert (own.format, own.content_type, opened(own).format) == ("jpeg", "image/jpeg", "JPEG")


@pytest.mark.parametrize(
    ("fmt", "pillow_name", "content_type"),
    [
        ("jpeg", "JPEG", "image/jpeg"),
        ("png", "PNG", "image/png"),
        ("webp", "WEBP", "image/webp"),
        ("avif", "AVIF", "image/avif"),
    ],
)
def test_convert_writes_the_asked_format(
    tmp_path: Path, run: Any, fmt: str, pillow_name: str, content_type: str
) -> None:
    if fmt not in pipeline.writable_formats():
        pytest.skip(f"this Pillow cannot write {fmt}")
    source = save(quadrants(), tmp_path / "s.png")
    [main] = run(source, {"op": "convert", "format": fmt})
    image = opened(main)
    assert (image.format, image.size) == (pillow_name, (80, 60))
    assert (main.format, main.content_type) == (fmt, content_type)
    assert main.path.suffix == "." + ("jpg" if fmt == "jpeg" else fmt)
    assert main.bytes == main.path.stat().st_size


def test_without_convert_the_source_format_is_kept_or_png_for_others(
    tmp_path: Path, run: Any
) -> None:
    [webp] = run(save(quadrants(), tmp_path / "s.webp", "WEBP"))
    assert opened(webp).format == "WEBP"
    [gif] = run(save(quadrants(), tmp_path / "s.gif", "GIF"))
    assert (gif.format, opened(gif).format) == ("png", "PNG")


def test_lower_quality_makes_a_smaller_jpeg(tmp_path: Path, run: Any) -> None:
    noisy = Image.merge("RGB", [Image.effect_noise((200, 200), 60)] * 3)
    source = save(noisy, tmp_path / "s.png")
    [high] = run(source, {"op": "convert", "format": "jpeg"}, {"op": "quality", "quality": 95})
    high_bytes = high.bytes
    [low] = run(source, {"op": "convert", "format": "jpeg"}, {"op": "quality", "quality": 20})
    assert low.bytes < high_bytes / 2


def test_transparent_palette_images_keep_their_alpha_in_webp(tmp_path: Path, run: Any) -> None:
    palette = Image.new("P", (20, 20), 0)
    palette.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    palette.paste(1, (10, 0, 20, 20))
    source = save(palette, tmp_path / "s.png", transparency=0)
    [main] = run(source, {"op": "convert", "format": "webp"})
    image = opened(main).convert("RGBA")
    assert image.getpixel((0, 0))[3] == 0 and near(image.getpixel((15, 5)), (*RED, 255))


def test_sixteen_bit_greyscale_is_scaled_not_clipped(tmp_path: Path, run: Any) -> None:
    wide = Image.new("I;16", (10, 10), 32768)
    source = save(wide, tmp_path / "s.png")
    [main] = run(source, {"op": "convert", "format": "jpeg"})
    value = opened(main).getpixel((5, 5))
    assert isinstance(value, int) and 120 <= value <= 135


def test_progress_is_reported_per_operation_up_to_100(tmp_path: Path, run: Any) -> None:
    source = save(quadrants(), tmp_path / "s.png")
    reports: list[tuple[float, str]] = []
    run(
        source,
        {"op": "resize", "width": 40},
        {"op": "rotate", "degrees": 90},
        {"op": "convert", "format": "webp"},
        report=lambda percent, message: reports.append((percent, message)),
    )
    percents = [percent for percent, _ in reports]
    assert percents == [25, 50, 75, 100]  # decode, resize, rotate, encode
    assert reports[1][1] == "resize → 40×30"


# ------------------------------------------------------------------- bad input


def test_a_file_that_is_not_an_image_is_a_permanent_error(tmp_path: Path, run: Any) -> None:
    source = tmp_path / "notes.txt"
    source.write_text("definitely not pixels")
    with pytest.raises(PermanentError, match="not an image Offload can read"):
        run(source)


def test_a_truncated_image_is_a_permanent_error(tmp_path: Path, run: Any) -> None:
    buffer = io.BytesIO()
    quadrants(400, 300).save(buffer, "JPEG")
    source = tmp_path / "cut.jpg"
    source.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    with pytest.raises(PermanentError, match="truncated or corrupt"):
        run(source)


def bomb_png(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims `width`×`height` pixels."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 16))
        + chunk(b"IEND", b"")
    )


@pytest.mark.parametrize(("width", "height"), [(8_000, 8_000), (200_000, 200_000)])
def test_a_decompression_bomb_is_refused_before_decoding(
    tmp_path: Path, run: Any, width: int, height: int
) -> None:
    source = tmp_path / "bomb.png"
    source.write_bytes(bomb_png(width, height))
    with pytest.raises(PermanentError, match="decompression bomb"):
        run(source)


def test_an_unsupported_source_format_is_named_in_the_error(tmp_path: Path, run: Any) -> None:
    source = save(quadrants(), tmp_path / "s.ppm", "PPM")
    with pytest.raises(PermanentError, match="unsupported source format PPM; accepted: avif, bmp"):
        run(source)


def test_an_output_format_this_pillow_cannot_write_is_a_permanent_error(
    tmp_path: Path, run: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(pipeline, "writable_formats", lambda: frozenset({"jpeg", "png"}))
    source = save(quadrants(), tmp_path / "s.png")
    with pytest.raises(PermanentError, match="avif output is not supported"):
        run(source, {"op": "convert", "format": "avif"})


def test_exif_too_long_for_a_jpeg_is_dropped_not_fatal(tmp_path: Path, run: Any) -> None:
    exif = exif_with(1)
    exif[0x010E] = "x" * 70_000  # ImageDescription: fine in a PNG, too long for a JPEG
    source = save(quadrants(), tmp_path / "s.png", exif=exif)
    [main] = run(source, {"op": "convert", "format": "jpeg"})
    assert opened(main).format == "JPEG" and len(opened(main).getexif()) == 0
    [png] = run(source)
    assert opened(png).getexif()[0x010F] == "OffloadCam"
