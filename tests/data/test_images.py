"""Safe decoding: orientation, mode normalisation, every failure as an ImageError, JPEG draft."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

from landmark.data import DEFAULT_MAX_PIXELS, ImageError, load_image, probe_size, read_gldv2, to_rgb

# any PIL warning that escapes the loader fails the test: warnings must never crash a batch job
pytestmark = pytest.mark.filterwarnings("error")

RED, BLUE, WHITE = (255, 0, 0), (0, 0, 255), (255, 255, 255)


def close(pixel, expected, tol=12):
    return all(abs(int(a) - int(b)) <= tol for a, b in zip(pixel, expected))


def save(img: Image.Image, path: Path, **kwargs) -> Path:
    img.save(path, **kwargs)
    return path


def png_claiming(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims ``width x height`` but which holds almost no pixel data."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def noise_jpeg(path: Path, size: tuple[int, int], orientation: int | None = None) -> Path:
    arr = np.random.default_rng(0).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    kwargs = {}
    if orientation:
        exif = Image.Exif()
        exif[0x0112] = orientation
        kwargs["exif"] = exif.tobytes()
    return save(Image.fromarray(arr), path, quality=90, **kwargs)


# -- orientation -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "orientation, size, red_corner",
    [
        (1, (40, 20), (0, 0)),  # upright: red stays top-left
        (3, (40, 20), (39, 19)),  # rotated 180: bottom-right
        (6, (20, 40), (19, 0)),  # rotate 90 clockwise to view: top-left goes top-right
        (8, (20, 40), (0, 39)),  # rotate 90 counter-clockwise to view: bottom-left
    ],
)
def test_exif_orientation_is_applied(tmp_path, orientation, size, red_corner):
    img = Image.new("RGB", (40, 20), BLUE)
    img.paste(RED, (0, 0, 8, 8))
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = save(img, tmp_path / "o.jpg", exif=exif.tobytes(), quality=95)

    out = load_image(path)
    assert out.mode == "RGB" and out.size == size
    assert probe_size(path) == size
    x, y = red_corner
    assert close(out.getpixel((x, y)), RED)
    assert close(out.getpixel((size[0] - 1 - x, size[1] - 1 - y)), BLUE)  # the opposite corner


def test_corrupt_exif_keeps_the_photo(tmp_path):
    img = Image.new("RGB", (30, 10), RED)
    path = save(img, tmp_path / "bad-exif.jpg", exif=b"Exif\x00\x00II*\x00\xff\xff\xff\x7f garbage")
    assert load_image(path).size == probe_size(path) == (30, 10)


# -- modes -----------------------------------------------------------------------------------


def test_cmyk_jpeg_to_rgb(tmp_path):
    path = save(Image.new("CMYK", (16, 16), (0, 255, 255, 0)), tmp_path / "cmyk.jpg", quality=95)
    out = load_image(path)
    assert out.mode == "RGB" and close(out.getpixel((8, 8)), RED)


def test_rgba_png_composited_on_white(tmp_path):
    img = Image.new("RGBA", (3, 1))
    img.putdata([(255, 0, 0, 0), (0, 0, 255, 255), (0, 0, 0, 128)])
    out = load_image(save(img, tmp_path / "a.png"))
    assert out.mode == "RGB"
    assert out.getpixel((0, 0)) == WHITE  # fully transparent red shows the white background
    assert out.getpixel((1, 0)) == BLUE
    assert close(out.getpixel((2, 0)), (127, 127, 127), tol=2)  # half-transparent black


def test_la_png_composited_on_white(tmp_path):
    img = Image.new("LA", (2, 1))
    img.putdata([(0, 0), (0, 255)])
    out = load_image(save(img, tmp_path / "la.png"))
    assert [out.getpixel((i, 0)) for i in range(2)] == [WHITE, (0, 0, 0)]


def test_palette_transparency_composited_on_white(tmp_path):
    img = Image.new("P", (2, 1))
    img.putpalette([255, 0, 0, 0, 255, 0] + [0] * 762)
    img.putdata([0, 1])
    out = load_image(save(img, tmp_path / "p.png", transparency=0))
    assert [out.getpixel((i, 0)) for i in range(2)] == [WHITE, (0, 255, 0)]  # index 0 is red but transparent


def test_palette_without_transparency(tmp_path):
    img = Image.new("P", (1, 1))
    img.putpalette([10, 20, 30] + [0] * 765)
    assert load_image(save(img, tmp_path / "p.gif")).getpixel((0, 0)) == (10, 20, 30)


def test_16bit_png_scaled_by_257(tmp_path):
    img = Image.new("I;16", (4, 1))
    for i, v in enumerate([0, 257 * 100, 65535, 1000]):
        img.putpixel((i, 0), v)
    path = save(img, tmp_path / "deep.png")
    with Image.open(path) as stored:
        assert stored.mode == "I;16"
    out = load_image(path)
    assert out.mode == "RGB"
    assert [out.getpixel((i, 0)) for i in range(4)] == [(v, v, v) for v in (0, 100, 255, 4)]


def test_big_endian_16bit_scaled_by_257():
    img = Image.new("I;16B", (2, 1))
    img.putpixel((0, 0), 257 * 200)
    img.putpixel((1, 0), 257 * 3)
    out = to_rgb(img)
    assert [out.getpixel((i, 0)) for i in range(2)] == [(200,) * 3, (3,) * 3]


@pytest.mark.parametrize(
    "values, dtype, mode",
    [
        ([-1000, 0, 1000], np.int32, "I"),
        ([-0.5, 0.0, 0.5], np.float32, "F"),
    ],
)
def test_int_and_float_images_scaled_by_range(values, dtype, mode):
    img = Image.fromarray(np.array([values], dtype=dtype))
    assert img.mode == mode
    out = to_rgb(img)
    assert [out.getpixel((i, 0))[0] for i in range(3)] == [0, 128, 255]


def test_constant_float_image_does_not_divide_by_zero():
    out = to_rgb(Image.fromarray(np.full((2, 2), 7.0, dtype=np.float32)))
    assert out.mode == "RGB" and np.asarray(out).tolist() == [[[7, 7, 7]] * 2] * 2


def test_grayscale_and_bilevel(tmp_path):
    gray = load_image(save(Image.new("L", (2, 2), 77), tmp_path / "g.png"))
    assert gray.mode == "RGB" and gray.getpixel((1, 1)) == (77, 77, 77)
    bilevel = Image.new("1", (2, 1))
    bilevel.putpixel((1, 0), 1)
    out = load_image(save(bilevel, tmp_path / "b.png"))
    assert [out.getpixel((i, 0)) for i in range(2)] == [(0, 0, 0), WHITE]


@pytest.mark.parametrize(
    "mode, value, expected",
    [
        ("HSV", (0, 255, 255), RED),
        ("YCbCr", (255, 128, 128), WHITE),
        ("LAB", (255, 128, 128), WHITE),
    ],
)
def test_colour_spaces_to_rgb(mode, value, expected):
    out = to_rgb(Image.new(mode, (1, 1), value))
    assert out.mode == "RGB" and close(out.getpixel((0, 0)), expected, tol=3)


def test_rgb_image_passes_through_unchanged():
    img = Image.new("RGB", (2, 2), RED)
    assert to_rgb(img) is img


# -- failures --------------------------------------------------------------------------------


def reason_for(source, **kwargs) -> ImageError:
    with pytest.raises(ImageError) as info:
        load_image(source, **kwargs)
    return info.value


def test_missing_file(tmp_path):
    path = tmp_path / "nope.jpg"
    err = reason_for(path)
    assert (err.source, err.reason) == (str(path), "file not found")
    assert str(err) == f"{path}: file not found"
    assert isinstance(err, ValueError)
    with pytest.raises(ImageError, match="file not found"):
        probe_size(path)


def test_directory(tmp_path):
    assert "is a directory" in reason_for(tmp_path).reason


def test_zero_byte_file(tmp_path):
    path = tmp_path / "empty.jpg"
    path.touch()
    assert reason_for(path).reason == "empty file (0 bytes)"


def test_text_file_named_jpg(tmp_path):
    path = tmp_path / "notes.jpg"
    path.write_text("this is not a photo\n")
    assert reason_for(path).reason == "not a recognised image format"


def test_truncated_jpeg(tmp_path):
    path = noise_jpeg(tmp_path / "full.jpg", (256, 256))
    data = path.read_bytes()
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(data[: len(data) // 2])
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False
    assert reason_for(cut).reason.startswith("truncated or corrupt image data: ")
    assert probe_size(cut) == (256, 256)  # the header is intact: probing never decodes the pixels


def test_header_over_our_limit_is_refused_before_decoding(tmp_path):
    # 12000 x 10000 = 120M pixels: over our default limit, under PIL's own hard limit (it only warns)
    path = tmp_path / "bomb.png"
    path.write_bytes(png_claiming(12000, 10000))
    for call in (load_image, probe_size):
        with pytest.raises(ImageError) as info:
            call(path)
        assert "120,000,000 pixels" in info.value.reason and f"{DEFAULT_MAX_PIXELS:,}" in info.value.reason


def test_pil_decompression_bomb_error_becomes_image_error(tmp_path):
    path = tmp_path / "huge.png"
    path.write_bytes(png_claiming(100_000, 100_000))
    assert "decompression bomb" in reason_for(path, max_pixels=10**12).reason
    # the limit named is the caller's when it is the lower one (the service's 40M, not Pillow's 179M)
    assert "over the limit of 40,000,000 pixels" in reason_for(path, max_pixels=40_000_000).reason


def test_max_pixels_on_a_real_image(tmp_path):
    path = save(Image.new("RGB", (300, 200), RED), tmp_path / "real.png")
    err = reason_for(path, max_pixels=50_000)
    assert "300x200" in err.reason and "60,000" in err.reason and "50,000" in err.reason
    assert load_image(path, max_pixels=60_000).size == (300, 200)  # the limit itself is allowed
    with pytest.raises(ImageError):
        load_image(path, max_pixels=0)


# -- bytes and draft -------------------------------------------------------------------------


def test_bytes_source(tmp_path):
    path = noise_jpeg(tmp_path / "n.jpg", (64, 48), orientation=6)
    from_bytes = load_image(path.read_bytes())
    assert from_bytes.size == probe_size(path.read_bytes()) == (48, 64)
    assert np.array_equal(np.asarray(from_bytes), np.asarray(load_image(path)))
    err = reason_for(b"definitely not an image")
    assert (err.source, err.reason) == ("<bytes>", "not a recognised image format")
    assert reason_for(b"").source == "<bytes>"


def test_draft_decodes_large_jpeg_smaller_but_not_below_target(tmp_path):
    path = noise_jpeg(tmp_path / "big.jpg", (2000, 1500))
    assert load_image(path).size == (2000, 1500)
    small = load_image(path, draft_size=300)
    assert small.mode == "RGB"
    assert small.size[0] < 2000 and min(small.size) >= 300
    assert small.size == (500, 375)  # DCT scale 1/4: the largest that keeps both sides >= 300


def test_draft_applies_to_mpo_photos(tmp_path):
    # cameras write MPO (JPEG + extra frames); PIL reports format "MPO" but it decodes as a JPEG
    path = tmp_path / "camera.jpg"
    with Image.open(noise_jpeg(tmp_path / "f.jpg", (2000, 1500))) as frame:
        frame.save(path, "MPO", save_all=True, append_images=[frame.copy()])
    assert load_image(path, draft_size=300).size == (500, 375)


def test_draft_with_orientation_keeps_both_sides(tmp_path):
    path = noise_jpeg(tmp_path / "big-rot.jpg", (2000, 1500), orientation=6)
    assert probe_size(path) == (1500, 2000)
    small = load_image(path, draft_size=400)
    assert small.size[1] > small.size[0]  # still portrait after the draft
    assert small.size[1] < 2000 and min(small.size) >= 400


def test_draft_ignored_for_non_jpeg(tmp_path):
    path = save(Image.new("RGB", (800, 600), BLUE), tmp_path / "big.png")
    assert load_image(path, draft_size=100).size == (800, 600)


# -- real photos -----------------------------------------------------------------------------


def test_real_photos_decode_and_probe_consistently(gldv2_root):
    records = read_gldv2(gldv2_root, "train").records[::50]
    assert len(records) >= 20
    for r in records:
        img = load_image(r.path)
        assert img.mode == "RGB" and img.size == probe_size(r.path)
        assert min(img.size) > 0
