"""utils/video_io.py on real files: Big Buck Bunny (mp4), kivy's cityCC0.mpg, skimage's astronaut."""
import os

import numpy as np
import pytest
from PIL import Image

from utils import assets, video_io
from utils.video_io import (
    EDITED_FRAME_COLOR,
    FIXED_FRAME_COLOR,
    from_model_range,
    is_image_path,
    load_reference,
    make_contact_sheet,
    mark_frames,
    read_frames,
    resize_crop,
    save_image,
    save_video,
    to_model_range,
    video_info,
)


@pytest.fixture(scope="module")
def bunny():
    return assets.bigbuckbunny_mp4()


@pytest.fixture(scope="module")
def bunny_frames(bunny):
    return read_frames(bunny, [0, 60, 131])  # [3, 720, 1280, 3]


@pytest.fixture(scope="module")
def astronaut():
    return assets.skimage_image("astronaut")


def _smooth_video(t=5, h=17, w=23):
    """A real photo cut into moving crops, so the codec sees natural content."""
    photo = np.asarray(Image.open(assets.skimage_image("astronaut")).convert("RGB"))
    return np.stack([photo[100 + 3 * i:100 + 3 * i + h, 200 + 2 * i:200 + 2 * i + w] for i in range(t)])


def _leftovers(folder):
    return sorted(name for name in os.listdir(folder) if ".tmp" in name)


# ------------------------------------------------------------------------------------------ reading


def test_bigbuckbunny_info_and_frames(bunny, bunny_frames):
    assert video_info(bunny) == dict(num_frames=132, height=720, width=1280, fps=25.0)
    assert bunny_frames.shape == (3, 720, 1280, 3) and bunny_frames.dtype == np.uint8
    # order and repeats are honoured: the same frames come back wherever they are asked for
    again = read_frames(bunny, np.array([131, 0, 0]))
    np.testing.assert_array_equal(again[0], bunny_frames[2])
    np.testing.assert_array_equal(again[1], bunny_frames[0])
    np.testing.assert_array_equal(again[2], bunny_frames[0])
    # distinct frames really differ (the clip moves)
    assert np.abs(bunny_frames[0].astype(int) - bunny_frames[2]).mean() > 5


def test_city_mpg_reads_the_right_frames():
    """decord 0.6 drops cityCC0.mpg's first GOP and repeats the last frame; ffmpeg's order is kept."""
    path = assets.city_mpg()
    assert video_info(path) == dict(num_frames=190, height=405, width=720, fps=25.0)
    frames = read_frames(path, [0, 12, 177, 189, 0])
    assert frames.shape == (5, 405, 720, 3)
    np.testing.assert_array_equal(frames[0], frames[4])
    assert np.abs(frames[0].astype(int) - frames[1]).mean() > 5  # decord returned frame 12 for 0
    assert np.abs(frames[2].astype(int) - frames[3]).mean() > 1  # decord repeated 189 from 178 on
    with pytest.raises(ValueError, match=r"out of range.*cityCC0\.mpg.*190 frames"):
        read_frames(path, [3, 190])


def test_image_is_one_frame(astronaut):
    assert is_image_path(astronaut) and is_image_path("x/Y.JPEG") and not is_image_path("a.mp4")
    assert video_info(astronaut) == dict(num_frames=1, height=512, width=512, fps=None)
    frames = read_frames(astronaut)
    assert frames.shape == (1, 512, 512, 3) and frames.dtype == np.uint8
    np.testing.assert_array_equal(frames[0], np.asarray(Image.open(astronaut).convert("RGB")))
    assert read_frames(astronaut, [0, 0]).shape == (2, 512, 512, 3)
    with pytest.raises(ValueError, match="out of range"):
        read_frames(astronaut, [1])


def test_grey_and_transparent_images(tmp_path, astronaut):
    photo = Image.open(astronaut).convert("RGB").resize((40, 30))
    grey_path = str(tmp_path / "grey.png")
    photo.convert("L").save(grey_path)
    grey = read_frames(grey_path)
    assert grey.shape == (1, 30, 40, 3)
    np.testing.assert_array_equal(grey[0, ..., 0], np.asarray(photo.convert("L")))
    np.testing.assert_array_equal(grey[0, ..., 0], grey[0, ..., 2])

    rgba = photo.convert("RGBA")
    alpha = np.full((30, 40), 255, np.uint8)
    alpha[:, :10] = 0  # left quarter fully transparent -> white
    rgba.putalpha(Image.fromarray(alpha))
    rgba_path = str(tmp_path / "rgba.png")
    rgba.save(rgba_path)
    frames = read_frames(rgba_path)
    assert frames.shape == (1, 30, 40, 3)
    assert (frames[0, :, :10] == 255).all()
    np.testing.assert_array_equal(frames[0, :, 10:], np.asarray(photo)[:, 10:])


def test_errors_name_the_file(tmp_path, bunny):
    missing = str(tmp_path / "missing.mp4")
    with pytest.raises(FileNotFoundError, match="missing.mp4"):
        read_frames(missing)
    with pytest.raises(FileNotFoundError, match="missing.mp4"):
        video_info(missing)
    garbage = tmp_path / "x.mp4"
    garbage.write_bytes(os.urandom(3000))
    with pytest.raises(ValueError, match=r"x\.mp4"):
        read_frames(str(garbage))
    with pytest.raises(ValueError, match=r"x\.mp4"):
        video_info(str(garbage))
    truncated = tmp_path / "half.mp4"  # Big Buck Bunny keeps its index at the end: cut it off
    truncated.write_bytes(open(bunny, "rb").read()[:500_000])
    with pytest.raises(ValueError, match=r"half\.mp4"):
        read_frames(str(truncated), [0])
    (tmp_path / "empty.mpg").write_bytes(b"")
    with pytest.raises(ValueError, match=r"empty\.mpg.*empty"):
        read_frames(str(tmp_path / "empty.mpg"))
    (tmp_path / "bad.mpg").write_bytes(os.urandom(3000))
    with pytest.raises(ValueError, match=r"bad\.mpg"):
        read_frames(str(tmp_path / "bad.mpg"))
    (tmp_path / "bad.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match=r"bad\.png"):
        read_frames(str(tmp_path / "bad.png"))
    with pytest.raises(ValueError, match=r"out of range.*bigbuckbunny\.mp4.*132 frames"):
        read_frames(bunny, [0, 132])
    with pytest.raises(ValueError, match="out of range"):
        read_frames(bunny, [-1])
    with pytest.raises(ValueError, match="integers"):
        read_frames(bunny, [0.5])


# --------------------------------------------------------------------------------------- transforms


def test_resize_crop_keeps_the_centre(bunny_frames):
    out = resize_crop(bunny_frames, 64, 96)
    assert out.shape == (3, 64, 96, 3) and out.dtype == np.uint8
    # 720x1280 -> cover 64x96 scales by 64/720: the central 1080 of 1280 columns survive
    for frame, got in zip(bunny_frames, out):
        centre = np.asarray(Image.fromarray(frame[:, 100:1180]).resize((96, 64), Image.BICUBIC)).astype(int)
        squashed = np.asarray(Image.fromarray(frame).resize((96, 64), Image.BICUBIC)).astype(int)
        assert np.abs(got - centre).mean() < 1.5
        assert np.abs(got - centre).mean() < 0.5 * np.abs(got - squashed).mean()
    # portrait target: 720x1280 -> 96x64 scales by 96/720, keeping columns 400..880
    tall = resize_crop(bunny_frames[:1], 96, 64)[0].astype(int)
    centre = np.asarray(Image.fromarray(bunny_frames[0][:, 400:880]).resize((64, 96), Image.BICUBIC))
    centre = centre.astype(int)
    assert tall.shape == (96, 64, 3) and np.abs(tall - centre).mean() < 1.5
    np.testing.assert_array_equal(resize_crop(out, 64, 96), out)  # already the size: unchanged


def test_model_range_round_trip(bunny_frames):
    x = to_model_range(bunny_frames[:, :8, :10])
    assert x.shape == (3, 3, 8, 10) and x.dtype == np.float32
    assert x.min() >= -1 and x.max() <= 1
    np.testing.assert_array_equal(from_model_range(x), bunny_frames[:, :8, :10])
    np.testing.assert_allclose(to_model_range(np.array([[[[0, 255, 128]]]], np.uint8))[:, 0, 0, 0],
                               [-1, 1, 128 / 127.5 - 1], rtol=0, atol=1e-6)
    clipped = from_model_range(np.array([-3.0, 0.0, 2.0], np.float32).reshape(3, 1, 1, 1))
    assert clipped.reshape(-1).tolist() == [0, 128, 255]  # 127.5 rounds half to even
    with pytest.raises(ValueError, match="NaN"):
        from_model_range(np.full((3, 1, 2, 2), np.nan, np.float32))
    with pytest.raises(ValueError, match=r"\[T, H, W, 3\]"):
        to_model_range(x)


def test_load_reference_shapes(astronaut, bunny):
    image = load_reference(astronaut, 32, 48)
    assert image.shape == (3, 1, 32, 48) and image.dtype == np.float32
    assert -1 <= image.min() < -0.5 and 0.5 < image.max() <= 1
    video = load_reference(bunny, 16, 24, num_frames=4)
    assert video.shape == (3, 4, 16, 24) and video.dtype == np.float32
    np.testing.assert_array_equal(video, to_model_range(resize_crop(read_frames(bunny, range(4)), 16, 24)))
    assert load_reference(astronaut, 8, 8, num_frames=5).shape == (3, 1, 8, 8)
    with pytest.raises(ValueError, match="num_frames"):
        load_reference(bunny, 8, 8, num_frames=0)


# ------------------------------------------------------------------------------------------ writing


def test_save_video_round_trip_odd_size(tmp_path):
    frames = _smooth_video(t=5, h=17, w=23)
    path = save_video(frames, str(tmp_path / "sub" / "clip.mp4"), fps=8)
    assert path == str(tmp_path / "sub" / "clip.mp4") and os.path.isfile(path)
    assert video_info(path) == dict(num_frames=5, height=17, width=23, fps=8.0)
    back = read_frames(path)
    assert back.shape == frames.shape
    assert np.abs(back.astype(int) - frames).mean() < 4
    assert _leftovers(tmp_path / "sub") == []


def test_save_video_from_model_range_even_size(tmp_path):
    frames = _smooth_video(t=4, h=16, w=24)
    path = save_video(to_model_range(frames), str(tmp_path / "clip.mp4"))
    back = read_frames(path)
    assert back.shape == (4, 16, 24, 3) and np.abs(back.astype(int) - frames).mean() < 4
    assert video_info(path)["fps"] == 24.0


def test_single_frame_is_a_png(tmp_path, astronaut):
    frame = read_frames(astronaut)[:, :20, :30]
    path = save_video(frame, str(tmp_path / "one.mp4"))
    assert path == str(tmp_path / "one.png") and not os.path.exists(tmp_path / "one.mp4")
    np.testing.assert_array_equal(read_frames(path), frame)  # PNG is lossless
    path = save_video(np.repeat(frame, 1, axis=0), str(tmp_path / "named.png"))
    assert path == str(tmp_path / "named.png")
    with pytest.raises(ValueError, match="2 frames"):
        save_video(np.repeat(frame, 2, axis=0), str(tmp_path / "two.png"))
    with pytest.raises(ValueError, match="extension"):
        save_video(np.repeat(frame, 2, axis=0), str(tmp_path / "two.gif"))
    assert sorted(os.listdir(tmp_path)) == ["named.png", "one.png"]


def test_save_video_is_atomic(tmp_path, monkeypatch):
    frames = _smooth_video(t=6, h=16, w=16)
    real_get_writer = video_io.imageio.get_writer

    class FailingWriter:
        """Writes the first frames for real, then fails as a full disk would."""

        def __init__(self, *args, **kwargs):
            self.inner = real_get_writer(*args, **kwargs)
            self.count = 0

        def append_data(self, frame):
            self.count += 1
            if self.count == 3:
                raise OSError("No space left on device")
            self.inner.append_data(frame)

        def close(self):
            self.inner.close()

    monkeypatch.setattr(video_io.imageio, "get_writer", FailingWriter)
    target = tmp_path / "out.mp4"
    with pytest.raises(OSError, match="No space"):
        save_video(frames, str(target))
    assert os.listdir(tmp_path) == []

    # an earlier file at the target is left as it was
    target.write_bytes(b"old")
    with pytest.raises(OSError, match="No space"):
        save_video(frames, str(target))
    assert os.listdir(tmp_path) == ["out.mp4"] and target.read_bytes() == b"old"
    monkeypatch.undo()
    save_video(frames, str(target))
    assert read_frames(str(target)).shape == (6, 16, 16, 3) and os.listdir(tmp_path) == ["out.mp4"]


def test_save_image_is_atomic(tmp_path, monkeypatch):
    def broken_save(self, fp, *args, **kwargs):
        with open(fp, "wb") as handle:
            handle.write(b"half a png")
        raise OSError("disk full")

    monkeypatch.setattr(Image.Image, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_image(np.zeros((4, 4, 3), np.uint8), str(tmp_path / "x.png"))
    assert os.listdir(tmp_path) == []


# -------------------------------------------------------------------------------------- visualising


def test_mark_frames_colours_only_the_border(bunny_frames):
    frames = resize_crop(bunny_frames, 12, 16)
    marked = mark_frames(frames, [0.0, 0.4, 1.0], width=2)
    assert marked.shape == frames.shape and marked is not frames
    border = np.ones((12, 16), bool)
    border[2:-2, 2:-2] = False
    for t, color in [(0, FIXED_FRAME_COLOR), (1, EDITED_FRAME_COLOR)]:
        assert (marked[t][border] == np.array(color, np.uint8)).all()
        np.testing.assert_array_equal(marked[t][~border], frames[t][~border])
    np.testing.assert_array_equal(marked[2], frames[2])  # generated frame untouched
    assert FIXED_FRAME_COLOR == (0, 255, 0) and EDITED_FRAME_COLOR == (255, 165, 0)
    np.testing.assert_array_equal(frames, resize_crop(bunny_frames, 12, 16))  # input not modified
    with pytest.raises(ValueError, match="2 values for 3 frames"):
        mark_frames(frames, [0, 1])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        mark_frames(frames, [0, 1.5, 1])


def test_contact_sheet_layout(bunny_frames, tmp_path):
    a = resize_crop(bunny_frames, 8, 10)  # 3 frames
    b = a[:2][::-1].copy()  # 2 frames
    sheet = make_contact_sheet([a, b], pad=2)
    assert sheet.shape == (2 * 8 + 3 * 2, 3 * 10 + 4 * 2, 3) and sheet.dtype == np.uint8
    np.testing.assert_array_equal(sheet[2:10, 2:12], a[0])
    np.testing.assert_array_equal(sheet[2:10, 26:36], a[2])
    np.testing.assert_array_equal(sheet[12:20, 14:24], b[1])
    assert (sheet[12:20, 26:36] == 255).all() and (sheet[:2] == 255).all()  # missing frame, padding
    picked = make_contact_sheet([a], max_frames=2, pad=0)  # first and last frame
    np.testing.assert_array_equal(picked, np.concatenate([a[0], a[2]], axis=1))
    path = save_image(sheet, str(tmp_path / "sheet.png"))
    np.testing.assert_array_equal(read_frames(path)[0], sheet)
    with pytest.raises(ValueError, match="same frame size"):
        make_contact_sheet([a, resize_crop(a, 9, 10)])


def test_narrow_widths_decord_cannot_decode(tmp_path):
    """decord 0.6 fails on widths such as 16 and 48 (NARROW_WIDTH_NOTE): ffmpeg decodes them."""
    for height, width in [(16, 16), (10, 48)]:
        frames = _smooth_video(t=3, h=height, w=width)
        path = save_video(frames, str(tmp_path / f"w{width}.mp4"))
        assert video_info(path)["height"] == height and video_info(path)["width"] == width
        back = read_frames(path, [2, 0])
        assert back.shape == (2, height, width, 3)
        assert np.abs(back.astype(int) - frames[[2, 0]]).mean() < 4


def test_transport_stream_frames_in_order(tmp_path):
    """decord 0.6 shifts every frame of an MPEG-TS file; ffmpeg's front-to-back decode does not."""
    import subprocess

    import imageio_ffmpeg

    frames = _smooth_video(t=20, h=32, w=64)
    frames[:, :8, :8] = (np.arange(20) * 12)[:, None, None, None]  # a frame-number patch
    path = str(tmp_path / "clip.ts")
    subprocess.run(
        [imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", "64x32",
         "-r", "25", "-i", "-", "-c:v", "libx264", "-g", "6", "-crf", "12", "-pix_fmt", "yuv420p", path],
        input=frames.tobytes(), check=True,
    )
    assert video_info(path)["num_frames"] == 20
    back = read_frames(path, [13, 0, 19, 6])
    numbers = np.round(back[:, 2:6, 2:6].astype(float).mean(axis=(1, 2, 3)) / 12).astype(int)
    assert numbers.tolist() == [13, 0, 19, 6]
