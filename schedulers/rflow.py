"""Rectified flow of Open-Sora 1.2: x_t = (1 - t/T) x0 + (t/T) noise, the model predicts x0 - noise.

Timesteps run from T = num_timesteps (pure noise) down towards 0; sampling is Euler steps
z <- z + v * (t_i - t_{i+1}) / T. With `use_timestep_transform` the uniform grid is warped towards
high noise levels for large resolutions / long clips (`timestep_transform`).

Pipeline surface (the loop stays in the pipeline)::

    scheduler.set_timesteps(30, height=H, width=W, num_frames=F)
    for t in scheduler.timesteps:
        out = model(paddle.concat([z, z]), paddle.full([2 * B], float(t)), y=...)
        cond, uncond = out.chunk(2)
        z = scheduler.step(scheduler.guidance(cond, uncond), t, z)

Follows hpcaitech/Open-Sora v1.2.0 `opensora/schedulers/rf/` (`__init__.py`, `rectified_flow.py`).
"""
from __future__ import annotations

from typing import Callable, Dict, Optional, Union

import numpy as np
import paddle

from .iddpm import (
    FrameMask,
    _check_edit_ratio,
    _check_latents,
    _restore,
    blend_frames,
    classifier_free_guidance,
    mean_flat,
)

__all__ = ["RFlow", "timestep_transform", "frame_mask_at_step"]

SAMPLE_METHODS = ("uniform", "logit-normal")


def _f32(v) -> paddle.Tensor:
    if isinstance(v, paddle.Tensor):
        return v.astype("float32")
    return paddle.to_tensor(np.asarray(v, dtype=np.float32).reshape([-1]))


def timestep_transform(
    t: paddle.Tensor,
    height,
    width,
    num_frames,
    base_resolution: float = 512 * 512,
    base_num_frames: float = 1,
    scale: float = 1.0,
    num_timesteps: float = 1,
) -> paddle.Tensor:
    """Shift timesteps towards the noisy end for large resolutions and long clips.

    With s = t / num_timesteps and ratio = sqrt(H*W / base_resolution) * sqrt(F' / base_num_frames)
    * scale, returns num_timesteps * ratio * s / (1 + (ratio - 1) * s), where F' = 1 for
    num_frames == 1 and num_frames // 17 * 5 otherwise (pixel frames -> latent frames of the v1.2
    VAE, upstream's hard-coded temporal reduction).

    Args:
        t: [B] timesteps (float or int) in [0, num_timesteps].
        height, width, num_frames: pixel height, width, frame count: numbers or [B] / [1] tensors.
        base_resolution, base_num_frames, scale: see above.
        num_timesteps: the scale of t.

    Returns:
        [B] float32 transformed timesteps (computed in float32 as upstream).

    Raises:
        ValueError: a num_frames in 2..16, for which upstream's formula gives F' = 0 and collapses
            every timestep to 0 (sampling would return the initial noise).

    Follows upstream v1.2 `rectified_flow.timestep_transform`, except that the num_frames == 1 test
    is per sample (upstream looks at sample 0 only and applies its answer to the whole batch).
    """
    frames = _f32(num_frames)
    bad = frames.numpy()
    bad = bad[(bad > 1) & (bad < 17)]
    if bad.size:
        raise ValueError(
            f"timestep_transform: num_frames {bad.tolist()} gives no latent frames under the v1.2 rule "
            f"num_frames // 17 * 5; accepted: 1 (images) or >= 17"
        )
    t = _f32(t) / num_timesteps
    resolution = _f32(height) * _f32(width)
    ratio_space = paddle.sqrt(resolution / base_resolution)
    latent_frames = paddle.where(frames == 1, paddle.ones_like(frames), paddle.floor(frames / 17) * 5)
    ratio_time = paddle.sqrt(latent_frames / base_num_frames)
    ratio = ratio_space * ratio_time * scale
    new_t = ratio * t / (1 + (ratio - 1) * t)
    return new_t * num_timesteps


def frame_mask_at_step(
    edit_ratio: paddle.Tensor, timesteps: paddle.Tensor, step_index: int, num_timesteps: int = 1000
) -> FrameMask:
    """Which frames are held, noised, or denoised at loop step `step_index` of a rectified-flow run.

    A frame with edit ratio m is noisy from the first step whose timestep t_i <= m * num_timesteps;
    at that step it is noised to level t_i (edit ratio 1: pure noise at step 0); before it, it is
    held at its reference. m == 0 frames are never noisy, so they end equal to the reference.

    Args:
        edit_ratio: [B, T] float in [0, 1].
        timesteps: [N] sampling timesteps, decreasing (`RFlow.timesteps`).
        step_index: i in [0, N).
        num_timesteps: T.

    Returns:
        `FrameMask` of [B, T] bool tensors.

    Raises:
        ValueError: bad edit_ratio, or step_index outside [0, N).

    Follows upstream v1.2 `RFLOW.sample(mask=...)` (`mask_t >= t`, noise added once when a frame
    becomes noisy) with the SPEC §4 fixes: m == 1 frames are noised at step 0 instead of being
    marked as already noised (hpcaitech issue 695), m == 0 frames are never noised.
    """
    n = timesteps.shape[0]
    if not 0 <= int(step_index) < n:
        raise ValueError(f"step_index must be in [0, {n}), got {step_index}")
    m = _check_edit_ratio(edit_ratio)
    level = m * float(num_timesteps)  # float32 as upstream

    def noisy(i):
        t_i = timesteps[i].astype("float32")
        return ((level >= t_i) & (m > 0)) | (m >= 1)

    now = noisy(int(step_index))
    before = noisy(int(step_index) - 1) if step_index > 0 else paddle.zeros_like(now)
    renoise = now & paddle.logical_not(before)
    return FrameMask(x_mask=now, renoise=renoise, held=paddle.logical_not(now))


class RFlow:
    """Open-Sora 1.2 rectified-flow scheduler.

    Args:
        num_sampling_steps: default number of Euler steps of `set_timesteps`.
        num_timesteps: T, the timestep scale the model sees (1000).
        cfg_scale: default guidance scale of `guidance`.
        use_discrete_timesteps: round sampling timesteps to ints; train on int t in [0, T).
        use_timestep_transform: warp timesteps with `timestep_transform` (needs height, width,
            num_frames in `set_timesteps` and in training's model_kwargs).
        sample_method: training time distribution, "uniform" on [0, T) or "logit-normal"
            (sigmoid(N(loc, scale)) * T).
        loc, scale: parameters of the logit-normal.
        transform_scale: `scale` of the timestep transform.

    Attributes:
        timesteps: [N] paddle tensor, float32 (int64 when discrete without transform), decreasing
            from T: the values the model receives.

    Raises:
        ValueError: unknown sample_method, logit-normal with discrete timesteps, bad numbers.

    Follows upstream v1.2 `RFLOW` / `RFlowScheduler`. Upstream's sampling ignores transform_scale
    (it only reaches training); here both use it (the default 1.0 makes them agree).
    """

    def __init__(
        self,
        num_sampling_steps: int = 10,
        num_timesteps: int = 1000,
        cfg_scale: float = 4.0,
        use_discrete_timesteps: bool = False,
        use_timestep_transform: bool = False,
        sample_method: str = "uniform",
        loc: float = 0.0,
        scale: float = 1.0,
        transform_scale: float = 1.0,
    ):
        if sample_method not in SAMPLE_METHODS:
            raise ValueError(f"sample_method {sample_method!r} is not one of {SAMPLE_METHODS}")
        if sample_method != "uniform" and use_discrete_timesteps:
            raise ValueError("use_discrete_timesteps=True needs sample_method='uniform'")
        if int(num_timesteps) < 1:
            raise ValueError(f"num_timesteps must be >= 1, got {num_timesteps}")
        if scale <= 0:
            raise ValueError(f"logit-normal scale must be > 0, got {scale}")
        self.num_timesteps = int(num_timesteps)
        self.num_sampling_steps = int(num_sampling_steps)
        self.cfg_scale = float(cfg_scale)
        self.use_discrete_timesteps = bool(use_discrete_timesteps)
        self.use_timestep_transform = bool(use_timestep_transform)
        self.sample_method = sample_method
        self.loc = float(loc)
        self.scale = float(scale)
        self.transform_scale = float(transform_scale)
        self.timesteps = None
        self._values = []
        if not self.use_timestep_transform:
            self.set_timesteps(self.num_sampling_steps)

    # -- schedule ------------------------------------------------------------------------------
    def set_timesteps(self, num_sampling_steps: Optional[int] = None, height=None, width=None, num_frames=None) -> None:
        """Set `.timesteps`: (1 - i/N) * T for i < N, rounded if discrete, then transformed.

        Args:
            num_sampling_steps: N (None = the constructor's).
            height, width, num_frames: pixel size and frame count of the video (numbers or
                one-element tensors); required with use_timestep_transform, else ignored.

        Raises:
            ValueError: N < 1; missing size with the transform; see `timestep_transform`.
        """
        n = self.num_sampling_steps if num_sampling_steps is None else int(num_sampling_steps)
        if n < 1:
            raise ValueError(f"num_sampling_steps must be >= 1, got {num_sampling_steps}")
        self.num_sampling_steps = n
        values = [(1.0 - i / n) * self.num_timesteps for i in range(n)]
        if self.use_discrete_timesteps:
            ts = paddle.to_tensor(np.array([int(round(v)) for v in values], dtype=np.int64))
        else:
            ts = paddle.to_tensor(np.array(values, dtype=np.float32))
        if self.use_timestep_transform:
            if height is None or width is None or num_frames is None:
                raise ValueError("use_timestep_transform needs height, width and num_frames in set_timesteps")
            for name, v in (("height", height), ("width", width), ("num_frames", num_frames)):
                if _f32(v).size != 1:
                    raise ValueError(f"{name} must be one number for the whole batch, got shape {list(_f32(v).shape)}")
            ts = timestep_transform(
                ts, height, width, num_frames, scale=self.transform_scale, num_timesteps=self.num_timesteps
            )
        self.timesteps = ts
        self._values = ts.numpy().tolist()
        self._np_dtype = ts.numpy().dtype

    def index_of(self, t) -> int:
        """Position of timestep t in `.timesteps` (t: number or tensor whose entries all equal it).

        Raises:
            ValueError: timesteps not set, entries that differ, or t not a sampling timestep.
        """
        if self.timesteps is None:
            raise ValueError("call set_timesteps(num_sampling_steps, height, width, num_frames) first")
        if isinstance(t, paddle.Tensor):
            values = np.unique(t.astype(self.timesteps.dtype).numpy().reshape([-1]))
            if values.size != 1:
                raise ValueError(f"one timestep for the whole batch is needed, got {values.tolist()}")
            t = values[0]
        value = np.asarray(t, dtype=self._np_dtype).item()
        try:
            return self._values.index(value)
        except ValueError:
            raise ValueError(f"timestep {t} is not one of the sampling timesteps {self._values}") from None

    # -- noise / steps -------------------------------------------------------------------------
    def add_noise(self, x0: paddle.Tensor, noise: paddle.Tensor, t) -> paddle.Tensor:
        """x_t = (1 - t/T) x0 + (t/T) noise, per sample.

        Args:
            x0, noise: [B, C, T, H, W]. t: number or [B] tensor in [0, T] (float or int).

        Returns:
            [B, C, T, H, W] float32 (computed as upstream: s = 1 - t/T; s x0 + (1 - s) noise).

        Raises:
            ValueError: shapes differ, or t has neither 1 nor B entries.
        """
        if list(x0.shape) != list(noise.shape):
            raise ValueError(f"noise shape {list(noise.shape)} differs from x0 shape {list(x0.shape)}")
        tp = _f32(t).reshape([-1])
        if tp.shape[0] not in (1, x0.shape[0]):
            raise ValueError(f"t must have 1 or {x0.shape[0]} entries, got {tp.shape[0]}")
        tp = 1 - tp / self.num_timesteps
        tp = tp.reshape([-1] + [1] * (x0.ndim - 1))
        return tp * x0 + (1 - tp) * noise

    def step(self, model_output: paddle.Tensor, t, sample: paddle.Tensor) -> paddle.Tensor:
        """One Euler step: sample + v * (t_i - t_{i+1}) / T (the last step goes to 0).

        Args:
            model_output: [B, C, T, H, W] velocity (x0 - noise) or the model's [B, 2C, ...] output
                whose first C channels are the velocity (upstream `chunk(2, dim=1)[0]`).
            t: current timestep, a value of `.timesteps`.
            sample: [B, C, T, H, W].

        Returns:
            prev_sample [B, C, T, H, W].

        Raises:
            ValueError: t not a sampling timestep; channel mismatch.
        """
        i = self.index_of(t)
        C = sample.shape[1]
        if model_output.shape[1] == 2 * C:
            model_output = model_output[:, :C]
        if list(model_output.shape) != list(sample.shape):
            raise ValueError(
                f"model_output must be [B, C or 2C, ...] for sample {list(sample.shape)}, "
                f"got {list(model_output.shape)}"
            )
        ts = self.timesteps
        dt = ts[i] - ts[i + 1] if i < ts.shape[0] - 1 else ts[i]
        dt = dt.astype("float32") / self.num_timesteps
        return sample + model_output * dt

    def guidance(self, model_output_cond, model_output_uncond, cfg_scale: Optional[float] = None) -> paddle.Tensor:
        """uncond + cfg_scale * (cond - uncond) on every channel given (upstream v1.2 sample()).

        Args:
            model_output_cond, model_output_uncond: [B, C(or 2C), T, H, W]. cfg_scale: None = default.
        """
        return classifier_free_guidance(
            model_output_cond, model_output_uncond, self.cfg_scale if cfg_scale is None else cfg_scale
        )

    # -- masked sampling -----------------------------------------------------------------------
    def apply_frame_mask(self, sample, reference, edit_ratio, t, noise: Optional[paddle.Tensor] = None):
        """Prepare the model input of a masked step (before the model; see `frame_mask_at_step`).

        Args:
            sample: [B, C, T, H, W] current latent. reference: [B, C, T, H, W] reference latent.
            edit_ratio: [B, T] float in [0, 1]. t: current value of `.timesteps`.
            noise: [B, C, T, H, W] noise for frames noised now (None draws it); passing the
                initial noise latent keeps edit-ratio-1 frames identical to an unmasked run.

        Returns:
            (sample, x_mask [B, T] bool; False = held, timestep-0 modulation).
        """
        _check_latents(sample, reference)
        B, _, T = sample.shape[:3]
        edit_ratio = _check_edit_ratio(edit_ratio, B, T)
        i = self.index_of(t)
        fm = frame_mask_at_step(edit_ratio, self.timesteps, i, self.num_timesteps)
        if noise is None:
            noise = paddle.randn(sample.shape, dtype=sample.dtype)
        renoised = self.add_noise(reference, noise, self.timesteps[i])
        return blend_frames(sample, reference, renoised, noise, edit_ratio, fm), fm.x_mask

    def restore_held_frames(self, prev_sample, reference, edit_ratio, t):
        """After `step`: reset frames held at this step to the reference."""
        _check_latents(prev_sample, reference, "prev_sample")
        B, _, T = prev_sample.shape[:3]
        edit_ratio = _check_edit_ratio(edit_ratio, B, T)
        i = self.index_of(t)
        return _restore(prev_sample, reference, frame_mask_at_step(edit_ratio, self.timesteps, i, self.num_timesteps))

    # -- training ------------------------------------------------------------------------------
    def sample_t(self, batch_size: int, model_kwargs: Optional[dict] = None) -> paddle.Tensor:
        """Draw training timesteps [B] (int64 if discrete, else float32), transformed if enabled.

        Raises:
            ValueError: the transform is on and model_kwargs lacks height / width / num_frames.
        """
        if self.use_discrete_timesteps:
            t = paddle.randint(0, self.num_timesteps, [batch_size], dtype="int64")
        elif self.sample_method == "uniform":
            t = paddle.rand([batch_size], dtype="float32") * self.num_timesteps
        else:
            t = paddle.nn.functional.sigmoid(paddle.randn([batch_size], dtype="float32") * self.scale + self.loc)
            t = t * self.num_timesteps
        if self.use_timestep_transform:
            mk = model_kwargs or {}
            missing = [k for k in ("height", "width", "num_frames") if mk.get(k) is None]
            if missing:
                raise ValueError(f"use_timestep_transform needs model_kwargs {missing} for training")
            t = timestep_transform(
                t,
                mk["height"],
                mk["width"],
                mk["num_frames"],
                scale=self.transform_scale,
                num_timesteps=self.num_timesteps,
            )
        return t

    def training_losses(
        self,
        model: Callable,
        x_start: paddle.Tensor,
        t: Optional[paddle.Tensor] = None,
        model_kwargs: Optional[dict] = None,
        noise: Optional[paddle.Tensor] = None,
        mask: Optional[paddle.Tensor] = None,
        weights: Optional[Union[np.ndarray, paddle.Tensor]] = None,
    ) -> Dict[str, paddle.Tensor]:
        """Velocity-matching loss: || model(x_t, t)[:, :C] - (x0 - noise) ||^2 averaged per sample.

        Args:
            model: callable(x_t, t, **model_kwargs) -> [B, C or 2C, T, H, W].
            x_start: [B, C, T, H, W] clean latents.
            t: [B] timesteps in [0, T]; None draws them (`sample_t`, given as is to the model).
            model_kwargs: model arguments; also height / width / num_frames for the transform.
                Pass `x_mask` here when training with a mask.
            noise: like x_start (None draws it).
            mask: [B, T] bool, True = frame to generate; False frames are given clean and left out
                of the loss.
            weights: optional per-integer-timestep weights [T + 1], indexed with t truncated to
                int64 (upstream indexes with t as is, which fails for float t).

        Returns:
            dict loss: [B] float32.

        Raises:
            ValueError: shapes.

        Follows upstream v1.2 `RFlowScheduler.training_losses`.
        """
        B = x_start.shape[0]
        model_kwargs = model_kwargs or {}
        if t is None:
            t = self.sample_t(B, model_kwargs)
        if noise is None:
            noise = paddle.randn(x_start.shape, dtype=x_start.dtype)
        if list(noise.shape) != list(x_start.shape):
            raise ValueError(f"noise shape {list(noise.shape)} differs from x_start shape {list(x_start.shape)}")
        x_t = self.add_noise(x_start, noise, t)
        if mask is not None:
            if x_start.ndim != 5 or list(mask.shape) != [B, x_start.shape[2]]:
                frames = x_start.shape[2] if x_start.ndim == 5 else "?"
                raise ValueError(f"mask must be [B, T] = [{B}, {frames}], got {list(mask.shape)}")
            mask = mask.astype("bool")
            x_t0 = self.add_noise(x_start, noise, paddle.zeros_like(_f32(t)))
            x_t = paddle.where(mask.unsqueeze(1).unsqueeze(-1).unsqueeze(-1).expand(x_t.shape), x_t, x_t0)
        out = model(x_t, t, **model_kwargs)
        if isinstance(out, tuple):
            out = out[0]
        C = x_start.shape[1]
        velocity = out[:, :C] if out.shape[1] == 2 * C else out
        sq = (velocity - (x_start - noise)) ** 2
        if weights is not None:
            w = weights if isinstance(weights, paddle.Tensor) else paddle.to_tensor(np.asarray(weights))
            idx = t.astype("int64") if isinstance(t, paddle.Tensor) else paddle.to_tensor(np.asarray(t, dtype=np.int64))
            sq = paddle.gather(w, idx.reshape([-1])).astype("float32").reshape([-1] + [1] * (x_start.ndim - 1)) * sq
        return {"loss": mean_flat(sq, mask=mask)}
