"""Video and image I/O on numpy arrays: read, resize-crop, convert to the model's range, save.

Frames travel as uint8 ``[T, H, W, 3]`` (RGB) between files and the transforms; the model sees
float32 ``[3, T, H, W]`` in [-1, 1]. An image is a one-frame video everywhere.

    file ──> read_frames ──> resize_crop ──> to_model_range ──> VAE.encode      (load_reference)
    VAE.decode ──> from_model_range ──> mark_frames / make_contact_sheet ──> save_video / save_image

Reading: videos go through decord, with two exceptions decoded front to back by the ffmpeg that
imageio-ffmpeg ships instead:
- containers without a seek index (MPEG program and transport streams, see
  `SEQUENTIAL_VIDEO_EXTENSIONS`), where decord 0.6 returns frames from the wrong positions;
- videos decord 0.6 cannot decode at all: for frame widths 2, 4, 6, 8, 12, 16, 24, 48 and 72
  pixels (every other even width up to 128 and the usual large sizes work) `get_batch` fails with
  "DECORDArrayCopyFromTo: The size must exactly match" and `reader[i]` returns [H, W, 4 or 6].
Images go through PIL. Every failure is a FileNotFoundError (missing file) or a ValueError naming
the file and the problem; decord and ffmpeg may still print their own log lines to stderr.

Writing: every file is written under a temporary name in the target folder and renamed into place
(`os.replace`) only when complete, so a failed or interrupted save leaves nothing at the target
path (SPEC.md §6).
"""
import os
import re
import uuid

import decord
import imageio.v2 as imageio
import imageio_ffmpeg
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp")

# decord 0.6 returns wrong frames for these (checked on ffmpeg-encoded numbered frames and on
# kivy's cityCC0.mpg): MPEG program streams (.mpg) on random access, MPEG transport streams (.ts)
# even when every frame is read in order, and cityCC0.mpg loses its first 12-frame GOP and repeats
# its last frame instead. They are decoded sequentially with ffmpeg instead.
SEQUENTIAL_VIDEO_EXTENSIONS = (".mpg", ".mpeg", ".m1v", ".m2v", ".vob", ".ts", ".m2ts", ".mts")

# Containers `save_video` writes H.264 into.
VIDEO_WRITE_EXTENSIONS = (".mp4", ".mkv", ".mov", ".avi")

# imageio's 0..10 quality scale for libx264 (10 = best); 8 keeps generated videos close to lossless.
VIDEO_QUALITY = 8

# Border colours of `mark_frames` (RGB).
FIXED_FRAME_COLOR = (0, 255, 0)  # green: frame fixed to its reference (edit ratio 0)
EDITED_FRAME_COLOR = (255, 165, 0)  # orange: frame partially edited (0 < edit ratio < 1)

# Background of `make_contact_sheet` (RGB white).
SHEET_BACKGROUND = 255


# ----------------------------------------------------------------------------------------- reading


def is_image_path(path) -> bool:
    """True if `path` ends with an image extension (`IMAGE_EXTENSIONS`, any case)."""
    return os.path.splitext(os.fspath(path))[1].lower() in IMAGE_EXTENSIONS


def _is_sequential_video(path) -> bool:
    return os.path.splitext(path)[1].lower() in SEQUENTIAL_VIDEO_EXTENSIONS


def _check_file(path) -> str:
    """The path as a str; FileNotFoundError if it does not exist, ValueError if it is no usable file."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"video or image file not found: {path!r}")
    if not os.path.isfile(path):
        raise ValueError(f"{path!r} is not a file (a directory?); expected a video or an image")
    if os.path.getsize(path) == 0:
        raise ValueError(f"cannot read {path!r}: the file is empty (0 bytes)")
    return path


def _short(error) -> str:
    """The last non-empty line of a decoder's message (decord and ffmpeg prepend logs and banners)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    if not lines:
        return type(error).__name__
    return re.sub(r"^\[[\d:]+\] \S+: ", "", lines[-1])  # drop decord's "[12:00:00] file.cc:83: "


def _check_indices(path, frame_indices, num_frames):
    """`frame_indices` as a list of ints in [0, num_frames) (all frames if None).

    num_frames None means "not known yet": only non-negativity is checked here.
    """
    if frame_indices is None:
        if num_frames is None:
            return None
        return list(range(num_frames))
    indices = np.asarray(frame_indices)
    if indices.ndim != 1 or indices.size == 0:
        raise ValueError(
            f"frame_indices for {path!r} must be a non-empty 1-D sequence of integers, "
            f"got shape {indices.shape}"
        )
    if indices.dtype.kind not in "iu":
        raise ValueError(f"frame_indices for {path!r} must be integers, got dtype {indices.dtype}")
    indices = [int(i) for i in indices]
    bad = [i for i in indices if i < 0 or (num_frames is not None and i >= num_frames)]
    if bad:
        raise _out_of_range(path, bad, num_frames)
    return indices


def _out_of_range(path, bad, num_frames) -> ValueError:
    if num_frames is None:
        return ValueError(f"frame index out of range for {path!r}: {bad[:5]} (indices must be >= 0)")
    return ValueError(
        f"frame index out of range for {path!r}: {bad[:5]} (the file has {num_frames} frames, "
        f"indices 0..{num_frames - 1})"
    )


def _open_image(path):
    try:
        image = Image.open(path)
        image.load()
    except (UnidentifiedImageError, OSError, ValueError) as error:
        raise ValueError(f"cannot read image {path!r}: {_short(error)}") from None
    return image


def _image_to_rgb(image) -> np.ndarray:
    """A PIL image as uint8 [H, W, 3]: EXIF rotation applied, grey and palette expanded, 16-bit
    scaled down, transparency composited over white."""
    image = ImageOps.exif_transpose(image)
    if image.mode in ("I;16", "I;16L", "I;16B", "I"):  # 16-bit grey (PNG) -> 8-bit grey
        grey = np.asarray(image).astype(np.int64)
        image = Image.fromarray((np.clip(grey, 0, 65535) >> 8).astype(np.uint8))  # mode L
    has_alpha = image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (
        image.mode == "P" and "transparency" in image.info
    )
    if has_alpha:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    return np.asarray(image.convert("RGB"), dtype=np.uint8).copy()  # [H, W, 3]


def _open_decord(path):
    try:
        return decord.VideoReader(path, ctx=decord.cpu(0), num_threads=1)
    except (decord.DECORDError, RuntimeError) as error:
        raise ValueError(f"cannot open video {path!r} (corrupt or not a video?): {_short(error)}") from None


def _open_ffmpeg(path):
    """(meta, generator of raw rgb24 frames) of ffmpeg's front-to-back decode; close the generator."""
    generator = imageio_ffmpeg.read_frames(path, pix_fmt="rgb24")
    try:
        meta = next(generator)
    except (OSError, RuntimeError, StopIteration) as error:
        generator.close()
        raise ValueError(f"cannot open video {path!r} (corrupt or not a video?): {_short(error)}") from None
    return meta, generator


def video_info(path) -> dict:
    """Frame count, size and frame rate of a video or image file.

    Args:
        path: a video (anything ffmpeg reads) or an image (`IMAGE_EXTENSIONS`).

    Returns:
        dict(num_frames=int, height=int, width=int, fps=float); an image has num_frames=1 and
        fps=None, and its height/width are after EXIF rotation (as `read_frames` returns it).

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: the file is empty, corrupt, or not a video/image.
    """
    path = _check_file(path)
    if is_image_path(path):
        image = _open_image(path)
        width, height = image.size
        if image.getexif().get(0x0112) in (5, 6, 7, 8):  # EXIF orientation with a 90° turn
            width, height = height, width
        return dict(num_frames=1, height=int(height), width=int(width), fps=None)
    if _is_sequential_video(path):
        meta, generator = _open_ffmpeg(path)
        generator.close()
        try:
            num_frames, _ = imageio_ffmpeg.count_frames_and_secs(path)
        except (OSError, RuntimeError) as error:
            raise ValueError(f"cannot count the frames of video {path!r}: {_short(error)}") from None
        width, height = meta["size"]
        return dict(num_frames=int(num_frames), height=int(height), width=int(width), fps=float(meta["fps"]))
    reader = _open_decord(path)
    num_frames, fps = len(reader), float(reader.get_avg_fps())
    if num_frames == 0:
        raise ValueError(f"video {path!r} has no frames")
    try:
        height, width, channels = reader[0].shape
    except (decord.DECORDError, RuntimeError):
        channels = None
    finally:
        del reader
    if channels != 3:  # decord's narrow-width bug (module docstring), or a first frame it cannot decode
        meta, generator = _open_ffmpeg(path)
        generator.close()
        width, height = meta["size"]
    return dict(num_frames=int(num_frames), height=int(height), width=int(width), fps=fps)


def read_frames(path, frame_indices=None) -> np.ndarray:
    """Decode frames of a video, or an image as one frame.

    Args:
        path: a video file, or an image (`IMAGE_EXTENSIONS`, read as RGB: grey expanded,
            transparency composited over white, EXIF rotation applied).
        frame_indices: 0-based frame numbers, in any order, repeats allowed; None = every frame.
            An image has the single frame 0.

    Returns:
        uint8 [len(frame_indices), H, W, 3], RGB.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: the file is empty, corrupt or not a video/image, or an index is out of range;
            the message names the file.
    """
    path = _check_file(path)
    if is_image_path(path):
        image = _image_to_rgb(_open_image(path))
        indices = _check_indices(path, frame_indices, 1)
        return np.repeat(image[None], len(indices), axis=0)  # [T, H, W, 3]
    if _is_sequential_video(path):
        return _read_sequential(path, frame_indices)
    reader = _open_decord(path)
    num_frames = len(reader)
    if num_frames == 0:
        raise ValueError(f"video {path!r} has no frames")
    indices = _check_indices(path, frame_indices, num_frames)
    try:
        frames = reader.get_batch(indices).asnumpy()  # [T, H, W, 3]
    except (decord.DECORDError, RuntimeError, IndexError):
        frames = None
    finally:
        del reader
    if frames is None or frames.shape[-1] != 3:
        # decord's narrow-width bug (module docstring), or a stream decord cannot decode:
        # decode front to back with ffmpeg, which raises a ValueError naming the file if it fails too
        return _read_sequential(path, indices)
    return frames


def _read_sequential(path, frame_indices) -> np.ndarray:
    """Decode from the first frame on, keeping the wanted ones, stopping after the last wanted."""
    indices = _check_indices(path, frame_indices, None)
    wanted = None if indices is None else set(indices)
    last = None if indices is None else max(indices)
    meta, generator = _open_ffmpeg(path)
    width, height = meta["size"]
    kept = {}
    count = 0
    try:
        for index, buffer in enumerate(generator):
            count = index + 1
            if wanted is None or index in wanted:
                kept[index] = np.frombuffer(buffer, dtype=np.uint8).reshape(height, width, 3)
            if last is not None and index >= last:
                break
    except (OSError, RuntimeError) as error:
        raise ValueError(f"cannot decode video {path!r}: {_short(error)}") from None
    finally:
        generator.close()
    if count == 0:
        raise ValueError(f"video {path!r} has no frames")
    if indices is None:
        return np.stack([kept[i] for i in range(count)])  # [T, H, W, 3]
    missing = [i for i in indices if i not in kept]
    if missing:
        raise _out_of_range(path, missing, count)
    return np.stack([kept[i] for i in indices])  # [T, H, W, 3]


# -------------------------------------------------------------------------------------- transforms


def _check_video(frames, name="frames") -> np.ndarray:
    frames = np.asarray(frames)
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3 or frames.shape[0] == 0:
        raise ValueError(
            f"{name} must be uint8 [T, H, W, 3] with T >= 1, got {frames.dtype} {tuple(frames.shape)}"
        )
    return frames


def _check_positive_int(value, name):
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def resize_crop(frames, height, width) -> np.ndarray:
    """Scale frames to cover `height` x `width`, then cut the centre.

    The scale is max(height / H, width / W), so one side fits exactly and the other is cropped
    equally on both ends. Implemented as one PIL bicubic resize of the centred source box per frame
    (antialiased when shrinking, sub-pixel exact crop).

    Args:
        frames: uint8 [T, H, W, 3].
        height, width: output size in pixels.

    Returns:
        uint8 [T, height, width, 3].
    """
    frames = _check_video(frames)
    height = _check_positive_int(height, "height")
    width = _check_positive_int(width, "width")
    src_h, src_w = frames.shape[1:3]
    if (src_h, src_w) == (height, width):
        return frames.copy()
    scale = max(height / src_h, width / src_w)
    box_w, box_h = width / scale, height / scale  # source region that maps onto the output
    left, top = (src_w - box_w) / 2, (src_h - box_h) / 2
    box = (left, top, left + box_w, top + box_h)
    out = np.empty((frames.shape[0], height, width, 3), dtype=np.uint8)
    for t, frame in enumerate(frames):
        out[t] = np.asarray(Image.fromarray(frame).resize((width, height), Image.BICUBIC, box=box))
    return out


def to_model_range(frames) -> np.ndarray:
    """uint8 [T, H, W, 3] -> float32 [3, T, H, W] in [-1, 1] (0 -> -1, 255 -> 1)."""
    frames = _check_video(frames)
    x = frames.astype(np.float32) / 127.5 - 1.0
    return np.ascontiguousarray(x.transpose(3, 0, 1, 2))  # [3, T, H, W]


def from_model_range(x) -> np.ndarray:
    """float [3, T, H, W] (clipped to [-1, 1]) -> uint8 [T, H, W, 3], rounded to nearest.

    Raises:
        ValueError: wrong shape, or NaN / infinite values (a diverged model should not be saved
            as a black video).
    """
    x = np.asarray(x)
    if x.ndim != 4 or x.shape[0] != 3 or x.shape[1] == 0 or x.dtype.kind != "f":
        raise ValueError(f"expected float [3, T, H, W] with T >= 1, got {x.dtype} {tuple(x.shape)}")
    if not np.isfinite(x).all():
        raise ValueError("video values contain NaN or infinity")
    x = np.clip(x.astype(np.float32), -1.0, 1.0)
    frames = np.round((x + 1.0) * 127.5).astype(np.uint8)
    return np.ascontiguousarray(frames.transpose(1, 2, 3, 0))  # [T, H, W, 3]


def load_reference(path, height, width, num_frames=None) -> np.ndarray:
    """Load a reference image or video at the target size, ready for the VAE.

    Args:
        path: image (one frame) or video file.
        height, width: target size (resize to cover, centre crop; see `resize_crop`).
        num_frames: for a video, read at most this many frames from its start; None = all.
            Ignored for an image.

    Returns:
        float32 [3, R, height, width] in [-1, 1]; R = 1 for an image, otherwise
        min(num_frames, frames in the video).

    Raises:
        FileNotFoundError, ValueError: as `read_frames`; ValueError also for a bad num_frames.
    """
    if num_frames is not None:
        num_frames = _check_positive_int(num_frames, "num_frames")
    if is_image_path(path) or num_frames is None:
        frames = read_frames(path)
    else:
        available = video_info(path)["num_frames"]
        frames = read_frames(path, list(range(min(num_frames, available))))
    return to_model_range(resize_crop(frames, height, width))


# ----------------------------------------------------------------------------------------- writing


def _temporary_path(path) -> str:
    """A hidden name beside `path` with the same extension (ffmpeg and PIL pick formats by it)."""
    folder, name = os.path.split(path)
    ext = os.path.splitext(name)[1]
    return os.path.join(folder, f".{name}.{uuid.uuid4().hex[:12]}.tmp{ext}")


def _remove_quietly(path):
    try:
        os.remove(path)
    except FileNotFoundError:
        pass


def _atomic_write(path, write):
    """Call write(tmp_path), then rename tmp_path to `path`; on any failure remove tmp_path."""
    path = os.path.abspath(os.fspath(path))
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = _temporary_path(path)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        _remove_quietly(tmp)
        raise
    return path


def save_image(img, path) -> str:
    """Write one uint8 [H, W, 3] image, atomically (temporary name, then rename).

    Args:
        img: uint8 [H, W, 3] RGB.
        path: target file; its extension picks the format (`IMAGE_EXTENSIONS`). The parent
            folder is created.

    Returns:
        the absolute path written.

    Raises:
        ValueError: wrong array or unsupported extension; nothing is written.
    """
    img = np.asarray(img)
    if img.dtype != np.uint8 or img.ndim != 3 or img.shape[-1] != 3 or 0 in img.shape:
        raise ValueError(f"image must be uint8 [H, W, 3], got {img.dtype} {tuple(img.shape)}")
    ext = os.path.splitext(os.fspath(path))[1].lower()
    if ext not in IMAGE_EXTENSIONS:
        raise ValueError(
            f"cannot save an image as {os.fspath(path)!r}: the extension must be one of {IMAGE_EXTENSIONS}"
        )
    image_format = Image.registered_extensions()[ext]
    options = {"quality": 95} if image_format in ("JPEG", "WEBP") else {}

    def write(tmp):
        Image.fromarray(img).save(tmp, format=image_format, **options)

    return _atomic_write(path, write)


def _as_uint8_video(frames) -> np.ndarray:
    """uint8 [T, H, W, 3] as is, or float [3, T, H, W] in [-1, 1] converted."""
    array = np.asarray(frames)
    if array.dtype.kind == "f":
        return from_model_range(array)
    if array.dtype != np.uint8:
        raise ValueError(
            f"frames must be uint8 [T, H, W, 3] or float [3, T, H, W] in [-1, 1], got {array.dtype} "
            f"{tuple(array.shape)}"
        )
    return _check_video(array)


def _verify_video(path, shape):
    """imageio does not report ffmpeg failures: check that the file holds the frames written."""
    try:
        info = video_info(path)
    except ValueError as error:
        raise OSError(f"ffmpeg did not write a readable video: {error}") from None
    found = (info["num_frames"], info["height"], info["width"])
    if found != tuple(shape[:3]):
        raise OSError(f"ffmpeg wrote {found} (frames, height, width) instead of {tuple(shape[:3])}")


def save_video(frames, path, fps=24) -> str:
    """Write a video (or a single frame as an image), atomically (temporary name, then rename).

    Args:
        frames: uint8 [T, H, W, 3], or float [3, T, H, W] in [-1, 1] (as the VAE decodes;
            clipped and rounded by `from_model_range`).
        path: target file. With T == 1 an image is written: at `path` if it has an image
            extension, otherwise with the extension replaced by `.png`. With T > 1 the extension
            must be one of `VIDEO_WRITE_EXTENSIONS` (H.264 through imageio-ffmpeg; any frame size:
            even sizes use yuv420p, odd ones yuv444p, which libx264 needs). The parent folder is
            created.
        fps: frames per second of the video, > 0.

    Returns:
        the absolute path written (differs from `path` when a single frame became a `.png`).

    Raises:
        ValueError: bad frames, fps or extension. Nothing is written.
        OSError: ffmpeg failed; nothing is left at the target path (a file that was already there
            is left untouched).
    """
    frames = _as_uint8_video(frames)
    path = os.fspath(path)
    ext = os.path.splitext(path)[1].lower()
    if frames.shape[0] == 1:
        if ext not in IMAGE_EXTENSIONS:
            path = os.path.splitext(path)[0] + ".png"
        return save_image(frames[0], path)
    if ext in IMAGE_EXTENSIONS:
        raise ValueError(
            f"cannot save {frames.shape[0]} frames as the image {path!r}; use one of {VIDEO_WRITE_EXTENSIONS}"
        )
    if ext not in VIDEO_WRITE_EXTENSIONS:
        raise ValueError(
            f"cannot save a video as {path!r}: the extension must be one of {VIDEO_WRITE_EXTENSIONS}"
        )
    is_number = isinstance(fps, (int, float, np.integer, np.floating)) and not isinstance(fps, (bool, np.bool_))
    if not (is_number and np.isfinite(fps) and fps > 0):
        raise ValueError(f"fps must be a positive number, got {fps!r}")
    height, width = frames.shape[1:3]
    pixel_format = "yuv420p" if height % 2 == 0 and width % 2 == 0 else "yuv444p"

    def write(tmp):
        writer = imageio.get_writer(
            tmp, format="FFMPEG", mode="I", fps=float(fps), codec="libx264", quality=VIDEO_QUALITY,
            pixelformat=pixel_format, macro_block_size=1,
        )
        try:
            for frame in frames:
                writer.append_data(frame)
        finally:
            writer.close()
        _verify_video(tmp, frames.shape)

    return _atomic_write(path, write)


# ------------------------------------------------------------------------------------ visualising


def mark_frames(frames, edit_ratio, width=2) -> np.ndarray:
    """Draw a border on the frames that came from references, to see the mask at a glance.

    Colours: `FIXED_FRAME_COLOR` (green) for edit ratio 0 (frame fixed to its reference),
    `EDITED_FRAME_COLOR` (orange) for 0 < ratio < 1 (partially re-generated); frames with ratio 1
    (generated) are left as they are.

    Args:
        frames: uint8 [T, H, W, 3].
        edit_ratio: T numbers in [0, 1] (e.g. one row of the per-frame mask).
        width: border thickness in pixels, >= 1.

    Returns:
        a marked uint8 copy, [T, H, W, 3].
    """
    frames = _check_video(frames)
    width = _check_positive_int(width, "width")
    ratios = np.asarray(edit_ratio, dtype=np.float64).reshape(-1)
    if ratios.shape[0] != frames.shape[0]:
        raise ValueError(f"edit_ratio has {ratios.shape[0]} values for {frames.shape[0]} frames")
    if not (np.isfinite(ratios).all() and (ratios >= 0).all() and (ratios <= 1).all()):
        raise ValueError(f"edit_ratio values must lie in [0, 1], got {ratios.tolist()}")
    out = frames.copy()
    for t, ratio in enumerate(ratios):
        if ratio >= 1:
            continue
        color = np.array(FIXED_FRAME_COLOR if ratio == 0 else EDITED_FRAME_COLOR, dtype=np.uint8)
        out[t, :width] = color
        out[t, -width:] = color
        out[t, :, :width] = color
        out[t, :, -width:] = color
    return out


def make_contact_sheet(videos, max_frames=None, pad=2) -> np.ndarray:
    """Tile videos into one image: one row per video, one column per frame.

    Args:
        videos: list of uint8 [T_i, H, W, 3], all of the same H and W (T_i may differ; missing
            frames of shorter rows stay background).
        max_frames: at most this many columns, taken evenly spaced over the longest video (first
            and last frame included); None = every frame.
        pad: background (white) pixels between and around the tiles, >= 0.

    Returns:
        uint8 [n*H + (n+1)*pad, C*W + (C+1)*pad, 3] for n videos and C columns.
    """
    if isinstance(videos, np.ndarray) or not isinstance(videos, (list, tuple)) or not videos:
        raise ValueError("videos must be a non-empty list of uint8 [T, H, W, 3] arrays")
    videos = [_check_video(v, name=f"videos[{i}]") for i, v in enumerate(videos)]
    sizes = {v.shape[1:3] for v in videos}
    if len(sizes) != 1:
        raise ValueError(f"all videos must have the same frame size, got {sorted(sizes)}")
    if isinstance(pad, (bool, np.bool_)) or not isinstance(pad, (int, np.integer)) or pad < 0:
        raise ValueError(f"pad must be a non-negative integer, got {pad!r}")
    height, width = sizes.pop()
    longest = max(v.shape[0] for v in videos)
    columns = longest
    if max_frames is not None:
        columns = min(_check_positive_int(max_frames, "max_frames"), longest)
    picks = np.arange(longest)
    if columns < longest:
        picks = np.round(np.linspace(0, longest - 1, columns)).astype(int)
    sheet = np.full(
        (len(videos) * height + (len(videos) + 1) * pad, columns * width + (columns + 1) * pad, 3),
        SHEET_BACKGROUND, dtype=np.uint8,
    )
    for row, video in enumerate(videos):
        top = pad + row * (height + pad)
        for column, t in enumerate(picks):
            if t < video.shape[0]:
                left = pad + column * (width + pad)
                sheet[top:top + height, left:left + width] = video[t]
    return sheet
