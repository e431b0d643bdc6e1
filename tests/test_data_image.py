"""Robust image decoding (swdet.data.image): modes, alpha, bit depth, EXIF, broken files."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image, ImageFile

from swdet.data.image import ImageDecodeError, decode_bytes, image_size, load_image
from swdet.errors import SwdetError


def _jpeg_bytes(w=64, h=48, seed=0) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def test_rgb_jpeg_roundtrip(tmp_path):
    p = tmp_path / "a.jpg"
    p.write_bytes(_jpeg_bytes(64, 48))
    img = load_image(p)
    assert img.mode == "RGB" and img.size == (64, 48)


def test_grayscale_becomes_rgb(tmp_path):
    arr = np.tile(np.arange(0, 256, 4, dtype=np.uint8), (10, 1))
    Image.fromarray(arr, mode="L").save(tmp_path / "g.png")
    out = np.asarray(load_image(tmp_path / "g.png"))
    assert out.shape == (10, 64, 3)
    for c in range(3):
        np.testing.assert_array_equal(out[..., c], arr)


def test_palette_becomes_rgb(tmp_path):
    img = Image.new("P", (8, 8))
    img.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    img.putpixel((0, 0), 1)
    img.save(tmp_path / "p.png")
    out = np.asarray(load_image(tmp_path / "p.png"))
    assert tuple(out[0, 0]) == (0, 0, 255) and tuple(out[1, 1]) == (255, 0, 0)


def test_rgba_is_composited_on_white(tmp_path):
    arr = np.zeros((4, 4, 4), dtype=np.uint8)
    arr[..., 0] = 200  # red-ish colour everywhere
    arr[0, 0, 3] = 0  # fully transparent -> white
    arr[1, 1, 3] = 255  # opaque -> its own colour
    arr[2, 2, 3] = 128  # half -> halfway to white
    Image.fromarray(arr, mode="RGBA").save(tmp_path / "a.png")
    out = np.asarray(load_image(tmp_path / "a.png")).astype(int)
    assert tuple(out[0, 0]) == (255, 255, 255)
    assert tuple(out[1, 1]) == (200, 0, 0)
    np.testing.assert_allclose(out[2, 2], [200 * 128 / 255 + 255 * 127 / 255, 255 * 127 / 255, 255 * 127 / 255], atol=1.5)


def test_la_and_transparent_palette_on_white(tmp_path):
    Image.fromarray(np.stack([np.full((3, 3), 10, np.uint8), np.zeros((3, 3), np.uint8)], -1), mode="LA").save(tmp_path / "la.png")
    assert tuple(np.asarray(load_image(tmp_path / "la.png"))[1, 1]) == (255, 255, 255)
    img = Image.new("P", (3, 3), 0)
    img.putpalette([0, 0, 0, 9, 9, 9] + [0] * 762)
    img.info["transparency"] = 0
    img.save(tmp_path / "pt.png", transparency=0)
    assert tuple(np.asarray(load_image(tmp_path / "pt.png"))[1, 1]) == (255, 255, 255)


def test_cmyk_becomes_rgb(tmp_path):
    Image.new("CMYK", (8, 8), (0, 255, 255, 0)).save(tmp_path / "c.jpg", quality=95)
    out = np.asarray(load_image(tmp_path / "c.jpg")).astype(int)
    assert out.shape == (8, 8, 3)
    assert out[4, 4, 0] > 200 and out[4, 4, 1] < 60 and out[4, 4, 2] < 60


def test_16bit_is_scaled_not_clipped(tmp_path):
    values = np.array([[0, 1000, 32768, 65535]], dtype=np.uint16)
    Image.fromarray(values).save(tmp_path / "d.png")
    assert Image.open(tmp_path / "d.png").mode.startswith("I")
    out = np.asarray(load_image(tmp_path / "d.png"))[0, :, 0]
    np.testing.assert_array_equal(out, [0, 4, 128, 255])  # v·255/65535, rounded


def test_32bit_integer_beyond_16bit_range_is_min_max_scaled(tmp_path):
    values = np.array([[-100000, 0, 100000]], dtype=np.int32)
    Image.fromarray(values, mode="I").save(tmp_path / "i.tif")
    out = np.asarray(load_image(tmp_path / "i.tif"))[0, :, 0]
    np.testing.assert_array_equal(out, [0, 128, 255])


def test_float_image_in_unit_range(tmp_path):
    Image.fromarray(np.array([[0.0, 0.5, 1.0]], dtype=np.float32), mode="F").save(tmp_path / "f.tif")
    out = np.asarray(load_image(tmp_path / "f.tif"))[0, :, 0]
    np.testing.assert_array_equal(out, [0, 128, 255])


def _exif_rotated(path, orientation=6):
    arr = np.zeros((20, 40, 3), dtype=np.uint8)
    arr[:, :20] = (255, 0, 0)  # stored: left half red, right half blue
    arr[:, 20:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(arr).save(path, quality=95, exif=exif.tobytes())


def test_exif_orientation_is_applied(tmp_path):
    p = tmp_path / "r.jpg"
    _exif_rotated(p, 6)  # 6 = display rotated 90 degrees clockwise
    img = load_image(p)
    assert img.size == (20, 40)
    out = np.asarray(img).astype(int)
    assert out[5, 10, 0] > 200 and out[5, 10, 2] < 60  # stored left column is now the top
    assert out[35, 10, 2] > 200 and out[35, 10, 0] < 60
    assert image_size(p) == (20, 40)


def test_broken_exif_block_is_ignored(tmp_path):
    p = tmp_path / "e.jpg"
    Image.new("RGB", (10, 6), (1, 2, 3)).save(p, exif=b"Exif\x00\x00garbage-not-tiff")
    assert load_image(p).size == (10, 6)


def test_truncated_jpeg_raises_naming_file(tmp_path):
    data = _jpeg_bytes(128, 96)
    p = tmp_path / "trunc.jpg"
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageDecodeError, match=r"trunc\.jpg: truncated image file"):
        load_image(p)
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


def test_truncated_png_raises(tmp_path):
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(buf, "PNG")
    p = tmp_path / "trunc.png"
    p.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    with pytest.raises(ImageDecodeError, match=r"trunc\.png: truncated"):
        load_image(p)


def test_corrupt_file_raises(tmp_path):
    p = tmp_path / "junk.jpg"
    p.write_bytes(b"this is not an image at all")
    with pytest.raises(ImageDecodeError, match=r"junk\.jpg: not an image file"):
        load_image(p)


def test_corrupt_jpeg_body_raises(tmp_path):
    data = bytearray(_jpeg_bytes(128, 96))
    data[300:1500] = bytes(1200)  # zero out tables and scan start
    p = tmp_path / "bad.jpg"
    p.write_bytes(bytes(data))
    with pytest.raises(ImageDecodeError, match=r"bad\.jpg: "):
        load_image(p)


def test_missing_file_raises_swdet_error(tmp_path):
    with pytest.raises(SwdetError, match=r"nope\.jpg: file not found"):
        load_image(tmp_path / "nope.jpg")
    with pytest.raises(ImageDecodeError, match="file not found"):
        image_size(tmp_path / "nope.jpg")


def test_directory_is_not_an_image(tmp_path):
    with pytest.raises(ImageDecodeError, match="is a directory"):
        load_image(tmp_path)


def test_decode_bytes(tmp_path):
    img = decode_bytes(_jpeg_bytes(30, 20), name="upload.jpg")
    assert img.mode == "RGB" and img.size == (30, 20)
    with pytest.raises(ImageDecodeError, match=r"upload\.bin: not an image file"):
        decode_bytes(b"\x00\x01garbage", name="upload.bin")
    with pytest.raises(ImageDecodeError, match=r"upload\.jpg: truncated"):
        decode_bytes(_jpeg_bytes(64, 64)[:900], name="upload.jpg")
    with pytest.raises(ImageDecodeError, match="empty data"):
        decode_bytes(b"", name="x")
