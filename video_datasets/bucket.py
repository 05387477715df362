"""Resolution / length / aspect-ratio buckets for variable-size training.

A bucket config (JSON under `configs/buckets/`) says, per resolution and clip length, how likely a
sample that fits is kept there and how many samples a batch of that bucket holds:

    {
      "size_multiple": 16,                     # bucket heights and widths are multiples of this
      "min_area_fraction": 0.8,                # a sample fits a resolution if H*W >= 0.8 * its area
      "resolutions": {"144p": 36864, "240p": 102240},        # name -> area in pixels (H*W)
      "aspect_ratios": ["9:16", "1:1", "16:9"],               # "H:W", one definition: ar = H / W
      "buckets": {
        "144p": {"1": [0.5, 48], "16": [1.0, 6]},             # num_frames -> [keep_prob, batch_size]
        "240p": {"16": [0.3, 2], "64": [0.0, null]}           # keep_prob 0: never kept here
      }
    }

Assignment of a sample with `T` frames of size `H x W` (`Bucket.assign`): resolutions are tried
from the largest area down; a resolution is a candidate if `H*W >= min_area_fraction * area`.
Within it, an image (`T == 1`) can only go to the `1`-frame bucket; a video goes to the longest
length `t > 1` with `T >= t * frame_interval`. The sample is kept there with probability
`keep_prob` (a uniform draw, supplied by the caller so that it is reproducible); otherwise the next
smaller resolution is tried. A sample that is kept nowhere is dropped (`None`). The aspect-ratio
bucket is the configured ratio closest to the sample's `H / W` (in log space, so 1:2 and 2:1 are
equally far from 1:1). This follows Open-Sora v1.1's `Bucket.get_bucket_id`.

Each (resolution, ratio) has one target size (`Bucket.size`): `h = sqrt(area * r)`,
`w = sqrt(area / r)`, each rounded to the nearest multiple of `size_multiple`.
"""
import json
import math
import os
from collections import namedtuple

BucketId = namedtuple("BucketId", ["resolution", "num_frames", "aspect_ratio"])
BucketId.__doc__ = "A bucket: resolution name, clip length in frames, aspect-ratio name ('H:W')."

CONFIG_KEYS = ("buckets", "resolutions", "aspect_ratios", "size_multiple", "min_area_fraction", "description")


def aspect_ratio(height, width):
    """The one definition of aspect ratio used in training and inference: height / width."""
    if height <= 0 or width <= 0:
        raise ValueError(f"aspect ratio needs a positive height and width, got {height}x{width}")
    return height / width


def parse_ratio(name):
    """'9:16' -> 0.5625 (height / width). Raises ValueError naming a malformed ratio."""
    parts = str(name).split(":")
    try:
        if len(parts) != 2:
            raise ValueError
        h, w = float(parts[0]), float(parts[1])
    except ValueError:
        raise ValueError(f"aspect ratio {name!r} must be written 'H:W' with positive numbers, e.g. '9:16'") from None
    if not (h > 0 and w > 0 and math.isfinite(h) and math.isfinite(w)):
        raise ValueError(f"aspect ratio {name!r} must be written 'H:W' with positive numbers, e.g. '9:16'")
    return h / w


def size_for_ratio(area, ratio, multiple=16):
    """Height and width with `h / w ~= ratio` and `h * w ~= area`, each a multiple of `multiple`.

    Args:
        area: target number of pixels (H*W), > 0.
        ratio: height / width, > 0.
        multiple: both sides are rounded to the nearest multiple of this (at least one multiple).

    Returns:
        (height, width) ints.
    """
    if area <= 0 or ratio <= 0 or multiple <= 0:
        raise ValueError(f"size_for_ratio needs area, ratio, multiple > 0; got {area}, {ratio}, {multiple}")
    h = math.sqrt(area * ratio)
    w = math.sqrt(area / ratio)
    return max(multiple, int(round(h / multiple)) * multiple), max(multiple, int(round(w / multiple)) * multiple)


def load_bucket_config(path):
    """Read a bucket config JSON file into a dict (validated by `Bucket`)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"bucket config {path!r} not found")
    with open(path) as f:
        try:
            cfg = json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"bucket config {path!r} is not valid JSON: {e}") from None
    if not isinstance(cfg, dict):
        raise ValueError(f"bucket config {path!r} must hold a JSON object with keys {CONFIG_KEYS}")
    return cfg


class Bucket:
    """The buckets of a bucket config and the assignment of samples to them.

    Args:
        buckets: {resolution: {num_frames: [keep_prob, batch_size]}}; num_frames keys may be ints
            or digit strings (JSON); batch_size may be None only where keep_prob is 0.
        resolutions: {resolution: area in pixels}; must name every resolution used in `buckets`.
        aspect_ratios: list of "H:W" names.
        size_multiple: bucket heights and widths are multiples of this.
        min_area_fraction: a sample fits a resolution if its H*W >= this * the resolution's area.
        source: where the config came from (used in error messages).

    Raises:
        ValueError: naming the offending entry (unknown resolution, bad keep_prob or batch size,
            non-integer frame count, empty config, bad ratio).
    """

    def __init__(self, buckets, resolutions, aspect_ratios, size_multiple=16, min_area_fraction=0.8, source="<dict>"):
        self.source = source
        if not isinstance(buckets, dict) or not buckets:
            raise ValueError(f"bucket config {source}: 'buckets' must be a non-empty object, got {buckets!r}")
        if not isinstance(resolutions, dict):
            raise ValueError(f"bucket config {source}: 'resolutions' must map names to pixel areas")
        if not aspect_ratios:
            raise ValueError(f"bucket config {source}: 'aspect_ratios' must list at least one 'H:W' ratio")
        if not (isinstance(size_multiple, int) and size_multiple > 0):
            raise ValueError(f"bucket config {source}: size_multiple must be a positive int, got {size_multiple!r}")
        if not (0 < float(min_area_fraction) <= 1):
            raise ValueError(f"bucket config {source}: min_area_fraction must be in (0, 1], got {min_area_fraction!r}")
        self.size_multiple = size_multiple
        self.min_area_fraction = float(min_area_fraction)
        self.ratios = {name: parse_ratio(name) for name in aspect_ratios}  # name -> H/W
        self._closest = {}  # (H, W) -> ratio name

        self.areas = {}
        for name in buckets:
            if name not in resolutions:
                raise ValueError(
                    f"bucket config {source}: resolution {name!r} has no area in 'resolutions' "
                    f"(known: {sorted(resolutions)})"
                )
            area = resolutions[name]
            if not (isinstance(area, (int, float)) and area > 0):
                raise ValueError(f"bucket config {source}: area of resolution {name!r} must be > 0, got {area!r}")
            self.areas[name] = area
        # largest area first: assignment tries the biggest resolution a sample fits
        self.resolutions = sorted(self.areas, key=lambda n: self.areas[n], reverse=True)

        self._table = {}  # resolution -> {num_frames: (keep_prob, batch_size)}, longest first
        for name in self.resolutions:
            entries = buckets[name]
            if not isinstance(entries, dict) or not entries:
                raise ValueError(
                    f"bucket config {source}: resolution {name!r} needs {{num_frames: [keep_prob, batch_size]}}"
                )
            table = {}
            for t_key, value in entries.items():
                where = f"bucket config {source}: entry {name!r}/{t_key!r}"
                try:
                    t = int(t_key)
                except (TypeError, ValueError):
                    raise ValueError(f"{where}: num_frames must be an integer") from None
                if t < 1 or str(t) != str(t_key).strip():
                    raise ValueError(f"{where}: num_frames must be an integer >= 1")
                if not (isinstance(value, (list, tuple)) and len(value) == 2):
                    raise ValueError(f"{where}: value must be [keep_prob, batch_size], got {value!r}")
                prob, bs = value
                if not (isinstance(prob, (int, float)) and 0.0 <= prob <= 1.0):
                    raise ValueError(f"{where}: keep_prob must be in [0, 1], got {prob!r}")
                if prob > 0 and not (isinstance(bs, int) and not isinstance(bs, bool) and bs > 0):
                    raise ValueError(f"{where}: batch_size must be a positive int when keep_prob > 0, got {bs!r}")
                if prob == 0 and bs is not None and not (isinstance(bs, int) and bs > 0):
                    raise ValueError(f"{where}: batch_size must be null or a positive int, got {bs!r}")
                table[t] = (float(prob), bs)
            self._table[name] = dict(sorted(table.items(), reverse=True))

        self.bucket_ids = [
            BucketId(res, t, ar)
            for res in self.resolutions
            for t, (prob, _) in self._table[res].items()
            if prob > 0
            for ar in self.ratios
        ]

    @classmethod
    def from_config(cls, cfg, source="<dict>"):
        """Build from a config dict (the JSON object described in the module docstring)."""
        unknown = sorted(set(cfg) - set(CONFIG_KEYS))
        if unknown:
            raise ValueError(f"bucket config {source}: unknown keys {unknown}; accepted: {list(CONFIG_KEYS)}")
        missing = [k for k in ("buckets", "resolutions", "aspect_ratios") if k not in cfg]
        if missing:
            raise ValueError(f"bucket config {source}: missing keys {missing}; accepted: {list(CONFIG_KEYS)}")
        return cls(
            cfg["buckets"],
            cfg["resolutions"],
            cfg["aspect_ratios"],
            size_multiple=cfg.get("size_multiple", 16),
            min_area_fraction=cfg.get("min_area_fraction", 0.8),
            source=source,
        )

    @classmethod
    def from_file(cls, path):
        """Build from a bucket config JSON file."""
        return cls.from_config(load_bucket_config(path), source=repr(path))

    def __len__(self):
        """Number of (resolution, num_frames, aspect ratio) buckets a sample can be kept in."""
        return len(self.bucket_ids)

    def closest_ratio(self, height, width):
        """Name of the configured aspect ratio closest to height / width (log distance)."""
        key = (height, width)
        if key not in self._closest:  # datasets have few distinct sizes: memoise
            log_ar = math.log(aspect_ratio(height, width))
            self._closest[key] = min(self.ratios, key=lambda name: abs(math.log(self.ratios[name]) - log_ar))
        return self._closest[key]

    def size(self, resolution, ratio):
        """(height, width) of a resolution at an aspect ratio name ('H:W')."""
        if resolution not in self.areas:
            raise ValueError(f"unknown resolution {resolution!r}; this config has {self.resolutions}")
        r = self.ratios[ratio] if ratio in self.ratios else parse_ratio(ratio)
        return size_for_ratio(self.areas[resolution], r, self.size_multiple)

    def target(self, bucket_id):
        """(num_frames, height, width) that the samples of `bucket_id` are cropped to."""
        height, width = self.size(bucket_id.resolution, bucket_id.aspect_ratio)
        return bucket_id.num_frames, height, width

    def keep_prob(self, resolution, num_frames):
        return self._table[resolution][num_frames][0]

    def batch_size(self, bucket_id):
        """Samples per batch (per rank) in this bucket."""
        return self._table[bucket_id.resolution][bucket_id.num_frames][1]

    def assign(self, num_frames, height, width, frame_interval=1, draws=None):
        """The bucket of a sample, or None if it is kept in none.

        Args:
            num_frames: frames in the source (1 = image).
            height, width: source size in pixels.
            frame_interval: the dataset's frame stride; a video fits length t if
                num_frames >= t * frame_interval.
            draws: one uniform number in [0, 1) per resolution, in `self.resolutions` order; the
                sample is kept at a candidate resolution if its draw < keep_prob. None keeps it at
                the first candidate with keep_prob > 0 (deterministic, e.g. for inspection).

        Returns:
            BucketId or None.
        """
        if num_frames < 1 or height < 1 or width < 1:
            return None
        if draws is not None and len(draws) < len(self.resolutions):
            raise ValueError(f"assign needs {len(self.resolutions)} draws (one per resolution), got {len(draws)}")
        area = height * width
        for i, res in enumerate(self.resolutions):
            if area < self.min_area_fraction * self.areas[res]:
                continue
            table = self._table[res]
            if num_frames == 1:
                t = 1 if 1 in table else None
            else:
                t = next((t for t in table if t > 1 and num_frames >= t * frame_interval), None)
            if t is None:
                continue
            prob = table[t][0]
            kept = prob > 0 if draws is None else draws[i] < prob
            if kept:
                return BucketId(res, t, self.closest_ratio(height, width))
        return None

    def describe(self):
        """One line per (resolution, num_frames): keep prob, batch size, sizes per ratio."""
        lines = [f"bucket config {self.source}: {len(self)} buckets"]
        for res in self.resolutions:
            for t, (prob, bs) in self._table[res].items():
                lines.append(f"  {res:>6} x {t:>3} frames: keep {prob:.2f}, batch {bs}")
        return "\n".join(lines)
