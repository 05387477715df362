"""Video-text datasets read from CSV files: fixed-size `VideoTextDataset` and bucketed
`VariableVideoTextDataset`.

CSV format: a header row with at least `path,text`; optional `num_frames,height,width,fps,
aspect_ratio` (other columns are ignored). Relative paths are resolved against the folder of the CSV
that lists them; several CSVs are concatenated in order. Images (`utils.video_io.is_image_path`)
are one-frame clips.

A sample is a dict of numpy / python values (never paddle tensors: DataLoader workers must not
create them):
    video       float32 [3, T, H, W] in [-1, 1]
    text        str
    num_frames  int T;  height, width: int H, W (the target size, after resize-crop)
    ar          float, height / width (the one definition, see `bucket.aspect_ratio`)
    fps         float, source fps / frame_interval (images: IMG_FPS)
    index       int, the CSV row actually loaded (a replacement's row if the requested one failed)
    skipped     list of (index, path, reason) for rows that failed while producing this sample

Unreadable samples (missing file, corrupt video, fewer than num_frames * frame_interval frames) are
skipped, never raised: the failure is logged once per process, recorded in `dataset.skip_log`, and a
replacement row drawn with a seeded generator is loaded instead, so every batch keeps its size. In
DataLoader worker processes the dataset's own log is a copy, so each sample also carries its
`skipped` entries; the collator concatenates them into `batch["skipped"]`, and the training loop
feeds them back with `dataset.record_skips(batch["skipped"])` so `dataset.skipped` and
`dataset.skipped_report()` in the main process cover all workers.
"""
import csv
import logging
import os
from collections import namedtuple

import numpy as np
import paddle

from utils.video_io import is_image_path, read_frames, resize_crop, to_model_range, video_info

logger = logging.getLogger(__name__)

IMG_FPS = 120  # fps reported for images (upstream Open-Sora's IMG_FPS)
REQUIRED_COLUMNS = ("path", "text")
OPTIONAL_COLUMNS = ("num_frames", "height", "width", "fps", "aspect_ratio")
_INT_COLUMNS = ("num_frames", "height", "width")

SampleKey = namedtuple("SampleKey", ["index", "epoch", "num_frames", "height", "width"])
SampleKey.__doc__ = """What a batch sampler hands the dataset for one sample: the CSV row, the epoch
(seeds the temporal crop) and the target clip size (the bucket's num_frames, height, width)."""


def temporal_crop_start(seed, epoch, index, spare, *stream):
    """First frame of row `index`'s temporal crop in `epoch`: uniform in 0..spare (frames left over
    beyond the crop), drawn from `numpy.random.default_rng([seed, epoch, index, *stream])` so a
    resumed run and every rank see the same crops. Returns 0 when spare is 0."""
    if spare == 0:
        return 0
    return int(np.random.default_rng([int(seed), int(epoch), int(index), *stream]).integers(0, int(spare) + 1))


class UnusableSample(Exception):
    """A row that cannot produce the requested clip (missing, corrupt, too short, image for video)."""


def read_csv_files(data_path):
    """Read and concatenate video-text CSVs.

    Args:
        data_path: a CSV path or a list of them.

    Returns:
        (paths, texts, info): absolute media paths [N], captions [N], and
        info = {"size": int64 [N, 3] of (num_frames, height, width), -1 where absent or blank,
                "fps": float64 [N], nan where absent or blank}.

    Raises:
        FileNotFoundError: a CSV does not exist.
        ValueError: a CSV is empty, lacks `path` or `text`, or has a malformed value (naming the
            file, line and column, and the accepted columns).
    """
    files = [data_path] if isinstance(data_path, (str, os.PathLike)) else list(data_path)
    if not files:
        raise ValueError("data_path is empty: give at least one CSV file")
    paths, texts, sizes, fpss = [], [], [], []
    accepted = f"required columns {list(REQUIRED_COLUMNS)}, optional {list(OPTIONAL_COLUMNS)}"
    for csv_path in files:
        csv_path = os.fspath(csv_path)
        if not os.path.isfile(csv_path):
            raise FileNotFoundError(f"data CSV {csv_path!r} not found")
        folder = os.path.dirname(os.path.abspath(csv_path))
        with open(csv_path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            header = reader.fieldnames
            if not header:
                raise ValueError(f"data CSV {csv_path!r} is empty; it needs a header row with {accepted}")
            header = [h.strip() for h in header]
            reader.fieldnames = header
            missing = [c for c in REQUIRED_COLUMNS if c not in header]
            if missing:
                raise ValueError(f"data CSV {csv_path!r} lacks columns {missing} (has {header}); {accepted}")
            n_before = len(paths)
            for row in reader:
                line = reader.line_num
                path = (row["path"] or "").strip()
                if not path:
                    raise ValueError(f"data CSV {csv_path!r} line {line}: empty 'path'")
                path = os.path.expanduser(path)
                paths.append(path if os.path.isabs(path) else os.path.join(folder, path))
                texts.append(row["text"] if row["text"] is not None else "")
                size = []
                for col in _INT_COLUMNS:
                    size.append(_number(row.get(col), csv_path, line, col, int, default=-1))
                sizes.append(size)
                fpss.append(_number(row.get("fps"), csv_path, line, "fps", float, default=float("nan")))
            if len(paths) == n_before:
                raise ValueError(f"data CSV {csv_path!r} has a header but no rows")
    info = {"size": np.asarray(sizes, dtype=np.int64).reshape(-1, 3), "fps": np.asarray(fpss, dtype=np.float64)}
    return paths, texts, info


def _number(value, csv_path, line, column, kind, default):
    if value is None or str(value).strip() == "":
        return default
    try:
        x = float(value)
    except ValueError:
        raise ValueError(f"data CSV {csv_path!r} line {line}: column {column!r} = {value!r} is not a number") from None
    if kind is int:
        if not x.is_integer() or x < 1:
            raise ValueError(
                f"data CSV {csv_path!r} line {line}: column {column!r} = {value!r} is not a positive integer"
            )
        return int(x)
    return x


class SkipLog:
    """The distinct rows that could not be read, keyed by row index (a row failing again, e.g. in
    every epoch or in several workers, is counted once)."""

    def __init__(self):
        self.entries = {}  # index -> (path, reason)

    def add(self, index, path, reason):
        """Record a failure; returns True if the row was not known to be bad yet."""
        index = int(index)
        if index in self.entries:
            return False
        self.entries[index] = (str(path), str(reason))
        return True

    def update(self, entries):
        """Merge (index, path, reason) triples, e.g. a batch's `skipped` list from a worker."""
        for index, path, reason in entries:
            index = int(index)
            if index not in self.entries:
                self.entries[index] = (str(path), str(reason))

    def __len__(self):
        return len(self.entries)

    def __contains__(self, index):
        return int(index) in self.entries

    def report(self, limit=20):
        """Human-readable summary: the count, then up to `limit` rows with their reasons."""
        if not self.entries:
            return "skipped samples: 0"
        lines = [f"skipped samples: {len(self.entries)}"]
        for index, (path, reason) in sorted(self.entries.items())[:limit]:
            lines.append(f"  row {index}: {path}: {reason}")
        if len(self.entries) > limit:
            lines.append(f"  ... and {len(self.entries) - limit} more")
        return "\n".join(lines)


class _CsvVideoDataset(paddle.io.Dataset):
    """Shared CSV reading, clip loading, and skip-and-replace logic."""

    repeat_images = False  # fixed-size dataset: an image fills num_frames by repetition

    def __init__(self, data_path, frame_interval=1, seed=0, max_retries=16):
        if not (isinstance(frame_interval, int) and frame_interval >= 1):
            raise ValueError(f"frame_interval must be an int >= 1, got {frame_interval!r}")
        if not (isinstance(max_retries, int) and max_retries >= 1):
            raise ValueError(f"max_retries must be an int >= 1, got {max_retries!r}")
        self.data_path = data_path
        self.paths, self.texts, self._csv_info = read_csv_files(data_path)
        self.frame_interval = frame_interval
        self.seed = int(seed)
        self.max_retries = max_retries
        self.epoch = 0
        self.skip_log = SkipLog()
        self._probed = {}  # index -> (T, H, W) or None, for rows whose CSV lacks the size

    def __len__(self):
        return len(self.paths)

    def set_epoch(self, epoch):
        """Epoch used for integer keys (SampleKeys carry their own)."""
        self.epoch = int(epoch)

    # -- skip reporting ----------------------------------------------------------------------------

    @property
    def skipped(self):
        """Number of distinct unreadable rows known to this process (see `record_skips`)."""
        return len(self.skip_log)

    def skipped_report(self, limit=20):
        """Summary of the unreadable rows known to this process."""
        return self.skip_log.report(limit)

    def record_skips(self, entries):
        """Merge a batch's `skipped` list (from DataLoader workers) into this process's log."""
        self.skip_log.update(entries)

    def _skip(self, index, reason):
        if self.skip_log.add(index, self.paths[index], reason):
            logger.warning("skipping data row %d (%s): %s", index, self.paths[index], reason)

    # -- metadata ----------------------------------------------------------------------------------

    def get_data_info(self, index):
        """(num_frames, height, width) of a row's source, or None if it cannot be read.

        Taken from the CSV when all three columns are filled, otherwise probed from the file (and
        cached). A row that cannot be probed is recorded as skipped.
        """
        t, h, w = (int(v) for v in self._csv_info["size"][index])
        if t > 0 and h > 0 and w > 0:
            return t, h, w
        if index not in self._probed:
            try:
                info = video_info(self.paths[index])
                self._probed[index] = (int(info["num_frames"]), int(info["height"]), int(info["width"]))
            except Exception as e:  # noqa: BLE001 -- any unreadable file is skipped, never raised
                self._skip(index, f"{type(e).__name__}: {e}")
                self._probed[index] = None
        return self._probed[index]

    def _fits(self, index, num_frames):
        """Whether a row can, as far as its metadata says, fill a num_frames clip."""
        info = self.get_data_info(index)
        if info is None:
            return False
        if num_frames == 1:
            return True
        if info[0] == 1 and is_image_path(self.paths[index]):
            return self.repeat_images
        return info[0] >= num_frames * self.frame_interval

    # -- loading -----------------------------------------------------------------------------------

    def load(self, index, epoch, num_frames, height, width):
        """Load one row as a sample dict (see the module docstring), raising on failure.

        Videos: a window of num_frames * frame_interval frames starts at a position drawn from
        a generator seeded by (seed, epoch, index); every frame_interval-th frame of it is read.

        Raises:
            UnusableSample, FileNotFoundError, ValueError, or a decoder error: the row is unusable.
        """
        path = self.paths[index]
        if is_image_path(path):
            frames = read_frames(path)  # [1, H, W, 3] uint8
            if num_frames > 1:
                if not self.repeat_images:
                    raise UnusableSample(f"an image cannot fill a {num_frames}-frame clip")
                frames = np.repeat(frames[:1], num_frames, axis=0)
            fps = float(IMG_FPS)
        else:
            info = video_info(path)
            total = int(info["num_frames"])
            need = num_frames * self.frame_interval
            if total < need:
                raise UnusableSample(
                    f"{total} frames, need {need} (num_frames {num_frames} x frame_interval {self.frame_interval})"
                )
            start = temporal_crop_start(self.seed, epoch, index, total - need)
            frames = read_frames(path, start + np.arange(num_frames) * self.frame_interval)
            src_fps = info.get("fps") or self._csv_info["fps"][index]
            if not (src_fps and np.isfinite(src_fps) and src_fps > 0):
                raise UnusableSample(f"unknown fps ({src_fps!r})")
            fps = float(src_fps) / self.frame_interval
        frames = resize_crop(frames, height, width)  # [T, height, width, 3] uint8
        return {
            "video": to_model_range(frames),  # [3, T, H, W] float32 in [-1, 1]
            "text": self.texts[index],
            "num_frames": int(num_frames),
            "height": int(height),
            "width": int(width),
            "ar": height / width,
            "fps": fps,
            "index": int(index),
        }

    def _get(self, index, epoch, num_frames, height, width):
        """`load` with skip-and-replace: never raises for a bad row (see the module docstring).

        Raises:
            IndexError: index out of range.
            RuntimeError: the row and `max_retries` replacement rows all failed (a broken dataset).
        """
        if not 0 <= index < len(self):
            raise IndexError(f"row index {index} out of range for a dataset of {len(self)} rows")
        skipped = []  # (row, path, reason) of the failures met while producing this sample
        if index in self.skip_log:  # known bad (an earlier epoch, or the sampler's probe)
            path, reason = self.skip_log.entries[index]
            skipped.append((index, path, reason))
            candidates = []
        else:
            candidates = [index]
        rng = np.random.default_rng([self.seed, int(epoch), int(index), 1])
        for attempt in range(self.max_retries + 1):
            candidate = candidates[attempt] if attempt < len(candidates) else self._draw_replacement(rng, num_frames)
            if candidate in self.skip_log:
                continue
            try:
                sample = self.load(candidate, epoch, num_frames, height, width)
            except Exception as e:  # noqa: BLE001 -- data must never stop training
                reason = f"{type(e).__name__}: {e}"
                self._skip(candidate, reason)
                skipped.append((candidate, self.paths[candidate], reason))
                continue
            sample["skipped"] = skipped
            return sample
        raise RuntimeError(
            f"row {index} ({self.paths[index]}) and {self.max_retries} replacements could not be read; "
            f"{self.skipped_report(limit=5)}"
        )

    def _draw_replacement(self, rng, num_frames):
        """A random row that is not known to be bad and whose metadata fits num_frames."""
        for _ in range(8 * self.max_retries):
            j = int(rng.integers(len(self)))
            if j not in self.skip_log and self._fits(j, num_frames):
                return j
        return j  # give up filtering; loading it will fail and count against max_retries


class VideoTextDataset(_CsvVideoDataset):
    """Every sample cropped to the same clip: `num_frames` frames at `image_size`.

    Args:
        data_path: CSV file or list of CSV files (see the module docstring).
        num_frames: frames per clip; images are repeated to this length (upstream behaviour).
        frame_interval: stride between the frames read from a video.
        image_size: (height, width) after resize-crop.
        seed: seeds temporal crops and replacement draws together with the epoch and row.
        max_retries: replacement rows tried before giving up on a sample (RuntimeError).

    Keys: an int row (the epoch comes from `set_epoch`) or a `SampleKey` from a batch sampler.
    """

    repeat_images = True

    def __init__(self, data_path, num_frames=16, frame_interval=1, image_size=(256, 256), seed=0, max_retries=16):
        super().__init__(data_path, frame_interval=frame_interval, seed=seed, max_retries=max_retries)
        if not (isinstance(num_frames, int) and num_frames >= 1):
            raise ValueError(f"num_frames must be an int >= 1, got {num_frames!r}")
        if len(image_size) != 2 or not all(isinstance(s, int) and s > 0 for s in image_size):
            raise ValueError(f"image_size must be (height, width) positive ints, got {image_size!r}")
        self.num_frames = num_frames
        self.image_size = tuple(image_size)

    def __getitem__(self, key):
        if isinstance(key, (int, np.integer)):
            index, epoch = int(key), self.epoch
        else:
            key = SampleKey(*key)
            target = (key.num_frames, key.height, key.width)
            if target != (None, None, None) and target != (self.num_frames, *self.image_size):
                raise ValueError(
                    f"key {tuple(key)} asks for {target}, but this dataset crops every sample to "
                    f"{(self.num_frames, *self.image_size)}"
                )
            index, epoch = int(key.index), int(key.epoch)
        return self._get(index, epoch, self.num_frames, *self.image_size)


class VariableVideoTextDataset(_CsvVideoDataset):
    """Samples cropped to the size of the bucket the batch sampler assigned them to.

    Args:
        data_path: CSV file or list of CSV files; `num_frames,height,width` columns avoid probing
            every file when the sampler builds buckets.
        frame_interval: stride between the frames read from a video.
        seed: seeds temporal crops and replacement draws together with the epoch and row.
        max_retries: replacement rows tried before giving up on a sample (RuntimeError).

    Keys: `SampleKey(index, epoch, num_frames, height, width)` from `BucketBatchSampler`.
    Replacement rows are drawn among rows whose length fits the bucket; images only fill 1-frame
    buckets.
    """

    def __getitem__(self, key):
        if isinstance(key, (int, np.integer)):
            raise TypeError(
                f"VariableVideoTextDataset needs a SampleKey(index, epoch, num_frames, height, width) "
                f"from a BucketBatchSampler, got the int {key}"
            )
        key = SampleKey(*key)
        if key.num_frames is None or key.height is None or key.width is None:
            raise ValueError(f"key {tuple(key)} has no target size (num_frames, height, width)")
        return self._get(int(key.index), int(key.epoch), int(key.num_frames), int(key.height), int(key.width))
