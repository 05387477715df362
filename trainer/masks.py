"""Frame masks for conditional training (image-to-video, extension, interpolation, editing).

A mask is bool [T] over latent frames: True = a frame the model generates (noised, in the loss),
False = a condition frame (given clean, timestep 0, left out of the loss). The mask ratios live in
a JSON file under `configs/masks/`:

    {"identity": 0.75, "quarter_random": 0.025, "image_head": 0.05, ...}

Mask types (Open-Sora v1.2 `MaskGenerator`; v1.1 names with a `mask_` prefix and `mask_no` for
`identity` are accepted too):
    identity            nothing masked
    quarter_random      a run of 1..T//4 frames at a random position
    quarter_head/tail   the first / last 1..T//4 frames
    quarter_head_tail   the first and the last k frames, k in 1..T//4
    image_random        one random frame
    image_head/tail     the first / last frame
    image_head_tail     the first and the last frame
    intepolate          every other frame, starting at frame 0 or 1 (upstream's spelling)
    random              each frame independently, with a ratio drawn from U(0.1, 0.9)

Ratios must lie in [0, 1] and sum to 1; a missing `identity` takes the remainder (as upstream).

Short clips (fixes over upstream): the "quarter" types use at least one frame (upstream draws
from 1..T//4, which fails for T < 4); a mask that leaves no frame to generate (e.g. head_tail on
two frames) becomes identity; a one-frame clip is never masked.

Draws come from Python's `random` module, as upstream: its state is saved in every checkpoint, so
a resumed run draws the same masks.
"""
import json
import math
import os
import random

import numpy as np

MASK_TYPES = (
    "identity",
    "quarter_random",
    "quarter_head",
    "quarter_tail",
    "quarter_head_tail",
    "image_random",
    "image_head",
    "image_tail",
    "image_head_tail",
    "intepolate",
    "random",
)
_V11_NAMES = {"mask_no": "identity", **{f"mask_{name}": name for name in MASK_TYPES[1:9]}}


def load_mask_ratios(path):
    """Read a mask-ratio JSON file (see the module docstring) into a dict."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"mask ratio config {path!r} not found")
    with open(path) as f:
        try:
            ratios = json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"mask ratio config {path!r} is not valid JSON: {e}") from None
    if not isinstance(ratios, dict):
        raise ValueError(f"mask ratio config {path!r} must hold an object {{mask type: ratio}}")
    ratios.pop("description", None)
    return ratios


class MaskGenerator:
    """Draws one frame mask per sample with configured probabilities.

    Args:
        mask_ratios: {mask type: probability}; see the module docstring.
        rng: a `random.Random`-like object; default the `random` module (checkpointed state).

    Raises:
        ValueError: an unknown mask type (the message lists the accepted ones), a ratio outside
            [0, 1], or ratios that do not sum to 1.
    """

    def __init__(self, mask_ratios, rng=None):
        ratios = {}
        for name, ratio in dict(mask_ratios).items():
            key = _V11_NAMES.get(name, name)
            if key not in MASK_TYPES:
                raise ValueError(f"unknown mask type {name!r}; accepted: {list(MASK_TYPES)}")
            if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0.0 <= ratio <= 1.0:
                raise ValueError(f"mask ratio of {name!r} must be a number in [0, 1], got {ratio!r}")
            ratios[key] = float(ratio)
        if "identity" not in ratios:
            ratios["identity"] = max(0.0, 1.0 - sum(ratios.values()))
        total = sum(ratios.values())
        if not math.isclose(total, 1.0, abs_tol=1e-6):
            raise ValueError(f"mask ratios must sum to 1, got {total:.6f} ({ratios})")
        self.mask_ratios = ratios
        self.rng = rng if rng is not None else random

    @classmethod
    def from_file(cls, path, rng=None):
        return cls(load_mask_ratios(path), rng)

    def choose(self):
        """The name of a mask type drawn with the configured probabilities."""
        u = self.rng.random()
        acc = 0.0
        for name, ratio in self.mask_ratios.items():
            acc += ratio
            if u < acc:
                return name
        return "identity"  # u fell into the rounding gap of the cumulative sum

    def make_mask(self, name, num_frames):
        """bool [num_frames] mask of type `name` (True = generate); draws sizes / positions."""
        T = int(num_frames)
        mask = np.ones(T, dtype=bool)
        if T <= 1 or name == "identity":
            return mask
        quarter = max(1, T // 4)
        if name == "quarter_random":
            size = self.rng.randint(1, quarter)
            start = self.rng.randint(0, T - size)
            mask[start : start + size] = False
        elif name == "image_random":
            mask[self.rng.randint(0, T - 1)] = False
        elif name == "quarter_head":
            mask[: self.rng.randint(1, quarter)] = False
        elif name == "image_head":
            mask[0] = False
        elif name == "quarter_tail":
            mask[-self.rng.randint(1, quarter) :] = False
        elif name == "image_tail":
            mask[-1] = False
        elif name == "quarter_head_tail":
            size = self.rng.randint(1, quarter)
            mask[:size] = False
            mask[-size:] = False
        elif name == "image_head_tail":
            mask[0] = False
            mask[-1] = False
        elif name == "intepolate":
            mask[self.rng.randint(0, 1) :: 2] = False
        elif name == "random":
            ratio = self.rng.uniform(0.1, 0.9)
            mask = np.asarray([self.rng.random() > ratio for _ in range(T)], dtype=bool)
            if not mask.any():
                mask[-1] = True  # as upstream
        else:
            raise ValueError(f"unknown mask type {name!r}; accepted: {list(MASK_TYPES)}")
        if not mask.any():  # nothing left to generate (e.g. head_tail on 2 frames)
            mask[:] = True
        return mask

    def get_mask(self, num_frames):
        """A mask of a randomly chosen type: bool [num_frames], True = generate."""
        return self.make_mask(self.choose(), num_frames)

    def get_masks(self, batch_size, num_frames):
        """bool [batch_size, num_frames], one independent draw per sample."""
        return np.stack([self.get_mask(num_frames) for _ in range(batch_size)])
