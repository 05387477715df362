"""Diffusion schedulers, separate from the models: the denoising loop lives in the pipeline.

`IDDPM` (Open-Sora 1.1) and `RFlow` (Open-Sora 1.2) share one surface: `set_timesteps`,
`.timesteps`, `step`, `add_noise`, `training_losses`, `guidance`, and the masked-sampling helpers
`apply_frame_mask` / `restore_held_frames`.
"""
import inspect

from .iddpm import IDDPM, FrameMask, classifier_free_guidance, space_timesteps
from .rflow import RFlow, timestep_transform

SCHEDULERS = {"iddpm": IDDPM, "rflow": RFlow}


def build_scheduler(config: dict):
    """Build a scheduler from a config dict with upstream's keys, e.g. {"type": "iddpm", ...}.

    Raises:
        ValueError: no or unknown "type" (accepted: "iddpm", "rflow"), or a key the scheduler
            does not take (the message lists the accepted keys).
    """
    config = dict(config)
    kind = config.pop("type", None)
    if kind not in SCHEDULERS:
        raise ValueError(f"scheduler type {kind!r} is not one of {sorted(SCHEDULERS)}")
    cls = SCHEDULERS[kind]
    accepted = [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
    unknown = sorted(set(config) - set(accepted))
    if unknown:
        raise ValueError(f"unknown {kind} scheduler keys {unknown}; accepted: {accepted}")
    return cls(**config)


__all__ = [
    "IDDPM",
    "RFlow",
    "FrameMask",
    "SCHEDULERS",
    "build_scheduler",
    "classifier_free_guidance",
    "space_timesteps",
    "timestep_transform",
]
