"""Images as users have them (issue 13, items 5 and 6): EXIF orientation applied (boxes and sizes in the displayed
frame), 16-bit greyscale and RGB PNGs scaled to 8 bits instead of clipped to white, and tiny images accepted."""

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from autotimm_deploy.demo import demo_model_path
from autotimm_deploy.demo.shapes import SPLIT_SEEDS, render_detection_sample
from autotimm_deploy.engines import load
from autotimm_deploy.engines.images import load_image
from autotimm_deploy.errors import AutotimmError

# PIL's Image.Transpose for each EXIF orientation: the displayed picture is the stored one transposed so
EXIF = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
        5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
        8: Image.Transpose.ROTATE_90}
INVERSE = {2: 2, 3: 3, 4: 4, 5: 5, 6: 8, 7: 7, 8: 6}  # the stored picture that displays as the original


def png16(arr: np.ndarray) -> bytes:
    """A 16-bit PNG (greyscale HxW or RGB HxWx3) written by hand: PIL cannot write 16-bit RGB."""
    h, w = arr.shape[:2]
    colour = 2 if arr.ndim == 3 else 0
    rows = b"".join(b"\x00" + arr[y].astype(">u2").tobytes() for y in range(h))
    chunk = lambda t, d: struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d) & 0xFFFFFFFF)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, colour, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))


@pytest.mark.parametrize("orientation", sorted(EXIF))
def test_exif_orientation_gives_the_displayed_frame(tmp_path, orientation):
    shown = render_detection_sample(SPLIT_SEEDS["test"], size=128)[0][:, :96]  # 128 x 96: not square
    stored = Image.fromarray(shown).transpose(EXIF[INVERSE[orientation]])
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = tmp_path / f"o{orientation}.png"
    stored.save(path, exif=exif)
    np.testing.assert_array_equal(load_image(path), shown)
    np.testing.assert_array_equal(load_image(Image.open(path)), shown)


def test_detections_of_a_rotated_photo_are_in_its_displayed_frame(tmp_path):
    predictor = load(demo_model_path("detector"))
    shown = np.asarray(Image.fromarray(render_detection_sample(SPLIT_SEEDS["test"] + 1, size=128)[0]).resize((128, 200)))
    exif = Image.Exif()
    exif[0x0112] = 6  # a phone held upright: stored rotated, displayed as `shown`
    Image.fromarray(shown).transpose(EXIF[8]).save(tmp_path / "phone.jpg", exif=exif, quality=98)
    got = predictor.predict(tmp_path / "phone.jpg", score_thresh=0.3)[0]
    ref = predictor.predict(shown, score_thresh=0.3)[0]
    assert (got.width, got.height) == (128, 200) and len(ref.labels) >= 1
    assert got.labels.tolist() == ref.labels.tolist()
    np.testing.assert_allclose(got.boxes, ref.boxes, atol=2.0)  # JPEG noise only


def test_16_bit_images_are_scaled_not_clipped(tmp_path):
    ramp = np.linspace(0, 65535, 256).round().astype(np.uint16)[None, :].repeat(4, axis=0)
    (tmp_path / "grey16.png").write_bytes(png16(ramp))
    grey = load_image(tmp_path / "grey16.png")
    assert grey.shape == (4, 256, 3) and grey[0, 0, 0] == 0 and grey[0, -1, 0] == 255
    np.testing.assert_array_equal(grey[0, :, 0], np.arange(256))  # every level, not 0 then white
    rgb = np.stack([ramp, ramp[:, ::-1], np.full_like(ramp, 32896)], axis=2)
    (tmp_path / "rgb16.png").write_bytes(png16(rgb))
    col = load_image(tmp_path / "rgb16.png")
    np.testing.assert_array_equal(col[0, :, 0], np.arange(256))
    np.testing.assert_array_equal(col[0, :, 1], np.arange(256)[::-1])
    assert (col[..., 2] == 128).all()
    np.testing.assert_array_equal(load_image(rgb), col)  # uint16 arrays alike
    assert Image.open(io.BytesIO(png16(ramp))).mode.startswith("I")  # what made PIL's RGB conversion clip


def test_tiny_images_are_accepted_and_malformed_arrays_are_one_error(tmp_path):
    predictor = load(demo_model_path("detector"))
    Image.fromarray(np.full((1, 1, 3), 200, np.uint8)).save(tmp_path / "dot.png")
    res = predictor.predict(tmp_path / "dot.png")[0]
    assert (res.width, res.height) == (1, 1) and (res.boxes[:, 2:] <= 1).all()
    for bad in (np.zeros((0, 5, 3), np.uint8), np.zeros((4, 4, 2), np.uint8), np.zeros((4, 4, 3), np.float32)):
        with pytest.raises(AutotimmError):
            load_image(bad)
