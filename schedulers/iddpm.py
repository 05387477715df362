"""IDDPM: the Gaussian diffusion of Open-Sora 1.1 (improved DDPM with a learned-range variance).

The scheduler is one (possibly respaced) discrete diffusion process. Its tables live as float32
numpy arrays on the object (`betas`, `alphas_cumprod`, ...), rebuilt the way upstream's
`SpacedDiffusion` does (float64 base schedule, float32 respaced betas, float32 tables).

Two levels of API:

* the pipeline surface (diffusers-style, the loop stays in the pipeline)::

      scheduler.set_timesteps(100)
      for t in scheduler.timesteps:                       # model-scale values 999, 989, ..., 0
          out = model(paddle.concat([z, z]), paddle.full([2 * B], int(t), "int64"), y=...)
          cond, uncond = out.chunk(2)
          z = scheduler.step(scheduler.guidance(cond, uncond), t, z)

* upstream-compatible methods working on indices into this process: `q_sample`,
  `q_mean_variance`, `q_posterior_mean_variance`, `p_mean_variance`, `training_losses`.

Follows hpcaitech/Open-Sora v1.1.0 `opensora/schedulers/iddpm/` (`gaussian_diffusion.py`,
`respace.py`, `diffusion_utils.py`, `__init__.py`).
"""
from __future__ import annotations

import math
from fractions import Fraction
from typing import Callable, Dict, List, NamedTuple, Optional, Sequence, Union

import numpy as np
import paddle

__all__ = [
    "IDDPM",
    "TABLE_NAMES",
    "FrameMask",
    "get_named_beta_schedule",
    "space_timesteps",
    "diffusion_tables",
    "mean_flat",
    "normal_kl",
    "approx_standard_normal_cdf",
    "discretized_gaussian_log_likelihood",
    "classifier_free_guidance",
    "frame_noise_in_steps",
    "frame_mask_at_step",
    "blend_frames",
]

TABLE_NAMES = (
    "betas",
    "alphas_cumprod",
    "alphas_cumprod_prev",
    "alphas_cumprod_next",
    "sqrt_alphas_cumprod",
    "sqrt_one_minus_alphas_cumprod",
    "log_one_minus_alphas_cumprod",
    "sqrt_recip_alphas_cumprod",
    "sqrt_recipm1_alphas_cumprod",
    "posterior_variance",
    "posterior_log_variance_clipped",
    "posterior_mean_coef1",
    "posterior_mean_coef2",
)


# ----------------------------------------------------------------------------------------------
# schedules and respacing
# ----------------------------------------------------------------------------------------------
def _linspace_f64(start: float, end: float, steps: int) -> np.ndarray:
    """float64 linspace computed the way torch's CPU kernel does (fused multiply-add from both ends).

    np.linspace differs from it in the last bit of some entries; matching it keeps the float32
    tables rebuilt from these betas identical to upstream's.
    """
    if steps == 1:
        return np.array([start], dtype=np.float64)
    step = (end - start) / (steps - 1)
    fs, fe, fstep = Fraction(start), Fraction(end), Fraction(step)
    half = steps // 2
    out = [float(fs + i * fstep) if i < half else float(fe - (steps - 1 - i) * fstep) for i in range(steps)]
    return np.array(out, dtype=np.float64)


def get_named_beta_schedule(schedule_name: str, num_diffusion_timesteps: int) -> np.ndarray:
    """The beta schedule of a diffusion process, float64 [num_diffusion_timesteps].

    Args:
        schedule_name: "linear" (Ho et al., 1e-4 .. 0.02 scaled by 1000 / steps) or
            "squaredcos_cap_v2" (Nichol & Dhariwal cosine schedule, betas capped at 0.999).
        num_diffusion_timesteps: number of steps, >= 1.

    Raises:
        ValueError: unknown schedule name or a non-positive step count.

    Follows upstream `gaussian_diffusion.get_named_beta_schedule`. Upstream's cosine branch calls
    an undefined name (`matorch`) and crashes; here it computes the intended schedule.
    """
    if not isinstance(num_diffusion_timesteps, (int, np.integer)) or num_diffusion_timesteps < 1:
        raise ValueError(f"num_diffusion_timesteps must be a positive int, got {num_diffusion_timesteps!r}")
    n = int(num_diffusion_timesteps)
    if schedule_name == "linear":
        scale = 1000 / n
        return _linspace_f64(scale * 0.0001, scale * 0.02, n)
    if schedule_name == "squaredcos_cap_v2":

        def alpha_bar(t):
            return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2

        return np.array([min(1 - alpha_bar((i + 1) / n) / alpha_bar(i / n), 0.999) for i in range(n)], dtype=np.float64)
    raise ValueError(f"unknown noise_schedule {schedule_name!r}; accepted: 'linear', 'squaredcos_cap_v2'")


def space_timesteps(num_timesteps: int, section_counts: Union[str, int, Sequence[int]]) -> List[int]:
    """The timesteps of a `num_timesteps` process kept when respacing it, sorted ascending.

    Args:
        num_timesteps: steps of the original process.
        section_counts: a list of step counts, one per equal-sized section of the original process
            (``[10, 15, 20]`` for 300 steps strides the first 100 steps to 10 steps, ...); a string of
            comma-separated counts (``"10,15,20"``, ``"100"``); an int (one section); or ``"ddimN"``
            for the DDIM paper's fixed integer stride giving exactly N steps.

    Returns:
        sorted list of kept original timesteps (upstream returns the same numbers as a set).

    Raises:
        ValueError: a malformed string, a count < 1, a section with fewer steps than requested
            ("cannot divide section of 10 steps into 20"), or a "ddimN" no integer stride reaches.

    Follows upstream `respace.space_timesteps`.
    """
    if isinstance(section_counts, str):
        text = section_counts.strip()
        if text.startswith("ddim"):
            try:
                desired = int(text[len("ddim"):])
            except ValueError:
                raise ValueError(f"timestep respacing {section_counts!r}: 'ddimN' needs an integer N") from None
            for stride in range(1, num_timesteps):
                if len(range(0, num_timesteps, stride)) == desired:
                    return list(range(0, num_timesteps, stride))
            raise ValueError(
                f"timestep respacing {section_counts!r}: cannot create exactly {desired} steps from "
                f"{num_timesteps} with an integer stride"
            )
        try:
            counts = [int(x) for x in text.split(",")]
        except ValueError:
            raise ValueError(
                f"timestep respacing {section_counts!r}: expected comma-separated integers or 'ddimN'"
            ) from None
    elif isinstance(section_counts, (int, np.integer)):
        counts = [int(section_counts)]
    else:
        counts = [int(x) for x in section_counts]
    if not counts or any(c < 1 for c in counts):
        raise ValueError(f"timestep respacing {section_counts!r}: every section count must be >= 1")

    size_per, extra = divmod(num_timesteps, len(counts))
    start = 0
    steps: List[int] = []
    for i, count in enumerate(counts):
        size = size_per + (1 if i < extra else 0)
        if size < count:
            raise ValueError(f"cannot divide section of {size} steps into {count}")
        stride = 1 if count <= 1 else (size - 1) / (count - 1)
        pos = 0.0
        for _ in range(count):
            steps.append(start + round(pos))
            pos += stride
        start += size
    return sorted(set(steps))


def diffusion_tables(betas: np.ndarray) -> Dict[str, np.ndarray]:
    """All tables of a diffusion process with these betas, in the betas' dtype.

    Args:
        betas: 1-D array in (0, 1], float32 or float64. The tables are computed in that precision
            (cumulative product accumulated in float64, as torch's CPU kernel does).

    Returns:
        dict with the keys of `TABLE_NAMES`, each an array shaped like betas.

    Raises:
        ValueError: betas not 1-D or outside (0, 1].

    Follows upstream `GaussianDiffusion.__init__`.
    """
    betas = np.asarray(betas)
    if betas.ndim != 1 or betas.size == 0:
        raise ValueError(f"betas must be a non-empty 1-D array, got shape {betas.shape}")
    if not ((betas > 0).all() and (betas <= 1).all()):
        raise ValueError("betas must lie in (0, 1]")
    dt = betas.dtype.type
    one = dt(1.0)
    alphas = one - betas
    ac = np.cumprod(alphas.astype(np.float64)).astype(betas.dtype)
    ac_prev = np.concatenate([np.array([1.0], dtype=betas.dtype), ac[:-1]])
    ac_next = np.concatenate([ac[1:], np.array([0.0], dtype=betas.dtype)])
    posterior_variance = betas * (one - ac_prev) / (one - ac)
    if len(betas) > 1:
        log_var_clipped = np.log(np.concatenate([posterior_variance[1:2], posterior_variance[1:]]))
    else:
        log_var_clipped = np.zeros([0], dtype=betas.dtype)
    return {
        "betas": betas,
        "alphas_cumprod": ac,
        "alphas_cumprod_prev": ac_prev,
        "alphas_cumprod_next": ac_next,
        "sqrt_alphas_cumprod": np.sqrt(ac),
        "sqrt_one_minus_alphas_cumprod": np.sqrt(one - ac),
        "log_one_minus_alphas_cumprod": np.log(one - ac),
        "sqrt_recip_alphas_cumprod": np.sqrt(one / ac),
        "sqrt_recipm1_alphas_cumprod": np.sqrt(one / ac - one),
        "posterior_variance": posterior_variance,
        "posterior_log_variance_clipped": log_var_clipped,
        "posterior_mean_coef1": betas * np.sqrt(ac_prev) / (one - ac),
        "posterior_mean_coef2": (one - ac_prev) * np.sqrt(alphas) / (one - ac),
    }


# ----------------------------------------------------------------------------------------------
# losses and likelihoods
# ----------------------------------------------------------------------------------------------
def mean_flat(tensor: paddle.Tensor, mask: Optional[paddle.Tensor] = None) -> paddle.Tensor:
    """Mean over all non-batch dimensions, or over the frames where `mask` is True.

    Args:
        tensor: [B, ...]; with a mask it must be [B, C, T, H, W].
        mask: optional [B, T] (bool or 0/1): only frames with True count.

    Returns:
        [B] tensor. A sample whose mask is all False gets 0 (upstream divides by zero and returns
        NaN, which would poison a training step).

    Raises:
        ValueError: a mask with a tensor that is not 5-D, or whose shape is not [B, T].

    Follows upstream `gaussian_diffusion.mean_flat`.
    """
    if mask is None:
        return tensor.mean(axis=list(range(1, tensor.ndim)))
    if tensor.ndim != 5:
        raise ValueError(f"a frame mask needs a [B, C, T, H, W] tensor, got shape {list(tensor.shape)}")
    B, C, T, H, W = tensor.shape
    if list(mask.shape) != [B, T]:
        raise ValueError(f"frame mask must be [B, T] = [{B}, {T}], got shape {list(mask.shape)}")
    m = mask.astype(tensor.dtype)
    per_frame = tensor.transpose([0, 2, 1, 3, 4]).reshape([B, T, C * H * W])  # [B, T, C*H*W]
    total = (per_frame * m.unsqueeze(2)).sum(axis=1).sum(axis=1)  # [B]
    denom = m.sum(axis=1) * (C * H * W)
    return total / paddle.clip(denom, min=1.0)


def normal_kl(mean1, logvar1, mean2, logvar2):
    """KL(N(mean1, exp(logvar1)) || N(mean2, exp(logvar2))) elementwise, in nats (broadcasting).

    Follows upstream `diffusion_utils.normal_kl`.
    """
    return 0.5 * (
        -1.0 + logvar2 - logvar1 + paddle.exp(logvar1 - logvar2) + ((mean1 - mean2) ** 2) * paddle.exp(-logvar2)
    )


def approx_standard_normal_cdf(x: paddle.Tensor) -> paddle.Tensor:
    """tanh approximation of the standard normal CDF (upstream `diffusion_utils`)."""
    return 0.5 * (1.0 + paddle.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * paddle.pow(x, 3))))


def discretized_gaussian_log_likelihood(x, *, means, log_scales):
    """Log-likelihood (nats) of data in [-1, 1] discretised to 256 bins under N(means, exp(log_scales)^2).

    Args:
        x, means, log_scales: tensors of one shape.

    Raises:
        ValueError: shapes differ.

    Follows upstream `diffusion_utils.discretized_gaussian_log_likelihood`.
    """
    if not (list(x.shape) == list(means.shape) == list(log_scales.shape)):
        raise ValueError(
            f"x, means, log_scales must share a shape, got {list(x.shape)}, {list(means.shape)}, "
            f"{list(log_scales.shape)}"
        )
    centered = x - means
    inv_stdv = paddle.exp(-log_scales)
    cdf_plus = approx_standard_normal_cdf(inv_stdv * (centered + 1.0 / 255.0))
    cdf_min = approx_standard_normal_cdf(inv_stdv * (centered - 1.0 / 255.0))
    log_cdf_plus = paddle.log(paddle.clip(cdf_plus, min=1e-12))
    log_one_minus_cdf_min = paddle.log(paddle.clip(1.0 - cdf_min, min=1e-12))
    log_cdf_delta = paddle.log(paddle.clip(cdf_plus - cdf_min, min=1e-12))
    return paddle.where(x < -0.999, log_cdf_plus, paddle.where(x > 0.999, log_one_minus_cdf_min, log_cdf_delta))


# ----------------------------------------------------------------------------------------------
# classifier-free guidance
# ----------------------------------------------------------------------------------------------
def classifier_free_guidance(
    model_output_cond: paddle.Tensor,
    model_output_uncond: paddle.Tensor,
    cfg_scale: float,
    cfg_channel: Optional[int] = None,
) -> paddle.Tensor:
    """uncond + cfg_scale * (cond - uncond) on the first `cfg_channel` channels; the rest from cond.

    Args:
        model_output_cond: [B, C_out, ...] model output with the text condition.
        model_output_uncond: same shape, with the null condition.
        cfg_scale: guidance scale (1 = conditional output only).
        cfg_channel: number of leading channels to guide; None = all channels.

    Returns:
        [B, C_out, ...] guided output for the conditional half of the batch.

    Raises:
        ValueError: shapes differ or cfg_channel outside [1, C_out].

    Follows upstream v1.1 `forward_with_cfg` (whose output's first half is exactly this).
    """
    if list(model_output_cond.shape) != list(model_output_uncond.shape):
        raise ValueError(
            f"cond and uncond outputs must share a shape, got {list(model_output_cond.shape)} "
            f"and {list(model_output_uncond.shape)}"
        )
    c_out = model_output_cond.shape[1]
    if cfg_channel is None:
        cfg_channel = c_out
    if not 1 <= int(cfg_channel) <= c_out:
        raise ValueError(f"cfg_channel must be in [1, {c_out}] (the output channels), got {cfg_channel}")
    cfg_channel = int(cfg_channel)
    cond, uncond = model_output_cond[:, :cfg_channel], model_output_uncond[:, :cfg_channel]
    guided = uncond + cfg_scale * (cond - uncond)
    if cfg_channel == c_out:
        return guided
    return paddle.concat([guided, model_output_cond[:, cfg_channel:]], axis=1)


# ----------------------------------------------------------------------------------------------
# mask-aware sampling (SPEC §4): per-frame edit ratios
# ----------------------------------------------------------------------------------------------
class FrameMask(NamedTuple):
    """Per-frame state of masked sampling at one step, each [B, T] bool.

    x_mask: the frame is noisy at this step (the model conditions it on t); False = held at its
        reference latent (the model sees a condition frame, timestep-0 modulation).
    renoise: the frame receives its noise at this step (the reference noised to this step's level,
        or pure noise when its edit ratio is 1).
    held: not x_mask: the frame is (re)set to its reference latent before and after the step.
    """

    x_mask: paddle.Tensor
    renoise: paddle.Tensor
    held: paddle.Tensor


def _check_edit_ratio(edit_ratio, batch: Optional[int] = None, frames: Optional[int] = None) -> paddle.Tensor:
    if not isinstance(edit_ratio, paddle.Tensor):
        edit_ratio = paddle.to_tensor(np.asarray(edit_ratio, dtype=np.float32))
    if edit_ratio.ndim != 2:
        raise ValueError(f"edit_ratio must be [B, T], got shape {list(edit_ratio.shape)}")
    if batch is not None and list(edit_ratio.shape) != [batch, frames]:
        raise ValueError(
            f"edit_ratio must be [B, T] = [{batch}, {frames}] like the latent, got {list(edit_ratio.shape)}"
        )
    values = edit_ratio.astype("float32").numpy()
    if not np.isfinite(values).all() or values.min() < 0 or values.max() > 1:
        raise ValueError(
            f"edit_ratio values must lie in [0, 1] (0 = fixed, 1 = generated), "
            f"got min {values.min()} max {values.max()}"
        )
    return edit_ratio.astype("float32")


def frame_noise_in_steps(edit_ratio: paddle.Tensor, num_steps: int) -> paddle.Tensor:
    """The respaced step index at which each frame is re-noised: int(m * N); -1 for m == 0 (never).

    Args:
        edit_ratio: [B, T] float in [0, 1] (0 = fixed to the reference, 1 = generated).
        num_steps: N, the number of (respaced) sampling steps.

    Returns:
        [B, T] int64. Upstream computes `(mask * N).to(int)` in float32; so does this. N means
        "from the first step on" (pure noise).

    Raises:
        ValueError: edit_ratio not [B, T] or outside [0, 1]; num_steps < 1.
    """
    if int(num_steps) < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    m = _check_edit_ratio(edit_ratio)
    k = (m * float(num_steps)).astype("int64")
    return paddle.where(m == 0, paddle.full_like(k, -1), k)


def frame_mask_at_step(edit_ratio: paddle.Tensor, step_index: int, num_steps: int) -> FrameMask:
    """Which frames are held, re-noised, or denoised at loop step `step_index` of an IDDPM run.

    The loop visits respaced indices t = N-1-i for i = 0..N-1. With k = int(m * N) (see
    `frame_noise_in_steps`): t > k the frame is held at its reference; t == k it is re-noised to
    level t and denoised from then on; m == 1 frames are pure noise from step 0; m == 0 frames are
    held at every step, so they end equal to the reference.

    Args:
        edit_ratio: [B, T] float in [0, 1].
        step_index: i in [0, N).
        num_steps: N.

    Returns:
        `FrameMask` of [B, T] bool tensors.

    Raises:
        ValueError: bad edit_ratio, or step_index outside [0, N).

    Follows upstream v1.1 `GaussianDiffusion.p_sample(mask=...)` with the SPEC §4 fixes: m == 1
    frames get noise (hpcaitech issue 695), m == 0 frames are never re-noised at the last step, and
    at its noise-in step a frame is already treated as noisy (x_mask True; upstream v1.1 used
    `mask_t > t` there, passing a just-noised frame as a clean condition frame; v1.2 uses `>=`).
    """
    n = int(num_steps)
    if not 0 <= int(step_index) < n:
        raise ValueError(f"step_index must be in [0, {n}), got {step_index}")
    t = n - 1 - int(step_index)
    k = frame_noise_in_steps(edit_ratio, n)
    x_mask = k >= t
    # first step at which the frame is noisy: k == t, or step 0 for k >= N (edit ratio 1)
    renoise = k == t
    if t == n - 1:
        renoise = renoise | (k >= n)
    return FrameMask(x_mask=x_mask, renoise=renoise, held=paddle.logical_not(x_mask))


def blend_frames(
    sample: paddle.Tensor,
    reference: paddle.Tensor,
    renoised_reference: paddle.Tensor,
    noise: paddle.Tensor,
    edit_ratio: paddle.Tensor,
    frame_mask: FrameMask,
) -> paddle.Tensor:
    """The model input of a masked step: held frames = reference, frames noised now = their noise.

    Args:
        sample: current latent [B, C, T, H, W].
        reference: reference latent z0 [B, C, T, H, W] (frames with edit ratio 1 may hold anything).
        renoised_reference: the reference noised to this step's level, [B, C, T, H, W].
        noise: pure noise [B, C, T, H, W], used for frames with edit ratio 1.
        edit_ratio: [B, T] float.
        frame_mask: this step's `FrameMask`.

    Returns:
        [B, C, T, H, W]; frames that are neither held nor noised now keep `sample`.
    """
    full = (edit_ratio >= 1.0).unsqueeze(1).unsqueeze(-1).unsqueeze(-1)  # [B, 1, T, 1, 1]
    held = frame_mask.held.unsqueeze(1).unsqueeze(-1).unsqueeze(-1)
    renoise = frame_mask.renoise.unsqueeze(1).unsqueeze(-1).unsqueeze(-1)
    shape = sample.shape
    out = paddle.where(held.expand(shape), reference, sample)
    noised = paddle.where(full.expand(shape), noise, renoised_reference)
    return paddle.where(renoise.expand(shape), noised, out)


def _restore(prev_sample: paddle.Tensor, reference: paddle.Tensor, frame_mask: FrameMask) -> paddle.Tensor:
    held = frame_mask.held.unsqueeze(1).unsqueeze(-1).unsqueeze(-1).expand(prev_sample.shape)
    return paddle.where(held, reference, prev_sample)


def _check_latents(sample: paddle.Tensor, reference: paddle.Tensor, what: str = "sample") -> None:
    if sample.ndim != 5:
        raise ValueError(f"{what} must be [B, C, T, H, W], got shape {list(sample.shape)}")
    if list(reference.shape) != list(sample.shape):
        raise ValueError(f"reference must have the {what}'s shape {list(sample.shape)}, got {list(reference.shape)}")


# ----------------------------------------------------------------------------------------------
# the scheduler
# ----------------------------------------------------------------------------------------------
def _as_index_tensor(t, batch: int) -> paddle.Tensor:
    if isinstance(t, paddle.Tensor):
        t = t.astype("int64").reshape([-1])
        if t.shape[0] == 1 and batch != 1:
            t = t.expand([batch])
        if t.shape[0] != batch:
            raise ValueError(f"timestep tensor must have one entry per sample ({batch}), got shape {list(t.shape)}")
        return t
    return paddle.full([batch], int(t), dtype="int64")


class IDDPM:
    """Open-Sora 1.1 diffusion: linear betas over 1000 steps, learned-range variance, respacing.

    Args:
        num_sampling_steps: respace to this many steps (None = keep all `diffusion_steps`).
        timestep_respacing: alternative to num_sampling_steps, anything `space_timesteps` accepts
            ("100", "ddim50", "10,15,20", [250]); "" or None = no respacing.
        noise_schedule: "linear" or "squaredcos_cap_v2".
        use_kl: train on the rescaled variational bound only.
        sigma_small: with learn_sigma False, use the posterior variance instead of betas.
        predict_xstart: the model predicts x0 instead of the noise.
        learn_sigma: the model outputs 2*C channels: the mean part and a value in [-1, 1]
            interpolating the log variance between posterior variance and beta (learned range).
        rescale_learned_sigmas: scale the VB term by num_timesteps / 1000.
        diffusion_steps: steps of the base process (1000).
        cfg_scale: default classifier-free guidance scale of `guidance`.
        cfg_channel: default number of leading output channels guided (None = all eps channels).

    Attributes:
        num_timesteps: N, steps of this (respaced) process.
        timestep_map: int64 numpy [N], the original timestep of each respaced index (what the model
            receives).
        timesteps: int64 paddle [N], the sampling order as model-scale values (timestep_map reversed).
        betas, alphas_cumprod, ..., posterior_mean_coef2: float32 numpy [N] tables.

    Raises:
        ValueError: both num_sampling_steps and timestep_respacing given, or invalid values.

    Follows upstream v1.1 `IDDPM(SpacedDiffusion)`. Its tables are float32 even without respacing,
    because `SpacedDiffusion` rebuilds the betas with `torch.FloatTensor`.
    """

    def __init__(
        self,
        num_sampling_steps: Optional[int] = None,
        timestep_respacing: Union[None, str, int, Sequence[int]] = None,
        noise_schedule: str = "linear",
        use_kl: bool = False,
        sigma_small: bool = False,
        predict_xstart: bool = False,
        learn_sigma: bool = True,
        rescale_learned_sigmas: bool = False,
        diffusion_steps: int = 1000,
        cfg_scale: float = 4.0,
        cfg_channel: Optional[int] = None,
    ):
        self.noise_schedule = noise_schedule
        self.diffusion_steps = int(diffusion_steps)
        self.base_betas = get_named_beta_schedule(noise_schedule, self.diffusion_steps)  # float64
        self._base_alphas_cumprod = np.cumprod(1.0 - self.base_betas)
        self.learn_sigma = bool(learn_sigma)
        self.sigma_small = bool(sigma_small)
        self.predict_xstart = bool(predict_xstart)
        if use_kl:
            self.loss_type = "rescaled_kl"
        elif rescale_learned_sigmas:
            self.loss_type = "rescaled_mse"
        else:
            self.loss_type = "mse"
        self.cfg_scale = float(cfg_scale)
        if cfg_channel is not None and int(cfg_channel) < 1:
            raise ValueError(f"cfg_channel must be None or >= 1, got {cfg_channel}")
        self.cfg_channel = cfg_channel
        self.set_timesteps(num_sampling_steps, timestep_respacing=timestep_respacing)

    # -- schedule ------------------------------------------------------------------------------
    def set_timesteps(
        self,
        num_sampling_steps: Optional[int] = None,
        timestep_respacing: Union[None, str, int, Sequence[int]] = None,
    ) -> None:
        """Respace the process (rebuilding every table) and set `.timesteps`.

        Args:
            num_sampling_steps: number of steps (None with no respacing = all base steps).
            timestep_respacing: see the class; exclusive with num_sampling_steps.

        Raises:
            ValueError: both given, or `space_timesteps` rejects the request.
        """
        if num_sampling_steps is not None:
            if timestep_respacing not in (None, ""):
                raise ValueError(
                    f"give num_sampling_steps ({num_sampling_steps}) or timestep_respacing "
                    f"({timestep_respacing!r}), not both"
                )
            if int(num_sampling_steps) < 1:
                raise ValueError(f"num_sampling_steps must be >= 1, got {num_sampling_steps}")
            timestep_respacing = str(int(num_sampling_steps))
        if timestep_respacing is None or timestep_respacing == "":
            timestep_respacing = [self.diffusion_steps]
        use = set(space_timesteps(self.diffusion_steps, timestep_respacing))

        last = 1.0
        new_betas, kept = [], []
        for i, ac in enumerate(self._base_alphas_cumprod):
            if i in use:
                new_betas.append(1.0 - ac / last)
                last = ac
                kept.append(i)
        tables = diffusion_tables(np.array(new_betas, dtype=np.float64).astype(np.float32))
        for name in TABLE_NAMES:
            setattr(self, name, tables[name])
        self.log_betas = np.log(self.betas)
        self.num_timesteps = len(kept)
        self.timestep_map = np.array(kept, dtype=np.int64)
        self.timesteps = paddle.to_tensor(self.timestep_map[::-1].copy())
        self._index_of_value = {int(v): i for i, v in enumerate(kept)}
        self._tensor_cache = {}

    def _table(self, name: str, place) -> paddle.Tensor:
        key = (name, str(place))
        if key not in self._tensor_cache:
            if name == "timestep_map":
                arr = self.timestep_map
            elif name == "log_betas":
                arr = self.log_betas
            elif name == "one_minus_alphas_cumprod":
                arr = np.float32(1.0) - self.alphas_cumprod
            elif name == "fixed_large_variance":
                arr = np.concatenate([self.posterior_variance[1:2], self.betas[1:]])
            elif name == "fixed_large_log_variance":
                arr = np.log(np.concatenate([self.posterior_variance[1:2], self.betas[1:]]))
            else:
                arr = getattr(self, name)
            self._tensor_cache[key] = paddle.to_tensor(arr, place=place)
        return self._tensor_cache[key]

    def _extract(self, name: str, t: paddle.Tensor, ndim: int) -> paddle.Tensor:
        """table[t] as float32 [B, 1, ...] with `ndim` dims (upstream `_extract_into_tensor`)."""
        res = paddle.gather(self._table(name, t.place), t.astype("int64")).astype("float32")
        return res.reshape([-1] + [1] * (ndim - 1))

    def index_of(self, t) -> paddle.Tensor:
        """Respaced indices of model-scale timesteps (values of `timestep_map`).

        Args:
            t: int, or int tensor of any shape.

        Returns:
            int64 tensor shaped like t (a [1] tensor for an int).

        Raises:
            ValueError: a value that is not a timestep of this process.
        """
        values = t.numpy().reshape([-1]) if isinstance(t, paddle.Tensor) else np.array([t]).reshape([-1])
        try:
            idx = [self._index_of_value[int(v)] for v in values]
        except KeyError as err:
            raise ValueError(
                f"timestep {err.args[0]} is not one of this scheduler's {self.num_timesteps} timesteps "
                f"(values of timestep_map: {self.timestep_map[:3].tolist()} ... {self.timestep_map[-1]})"
            ) from None
        shape = list(t.shape) if isinstance(t, paddle.Tensor) else [1]
        return paddle.to_tensor(np.array(idx, dtype=np.int64).reshape(shape or [1]))

    # -- forward process -----------------------------------------------------------------------
    def q_mean_variance(self, x_start: paddle.Tensor, t: paddle.Tensor):
        """Mean, variance and log variance of q(x_t | x_0), each shaped like x_start.

        Args:
            x_start: [B, C, ...] clean latents. t: [B] int indices into this process.
        """
        mean = self._extract("sqrt_alphas_cumprod", t, x_start.ndim) * x_start
        variance = self._extract("one_minus_alphas_cumprod", t, x_start.ndim) + paddle.zeros_like(x_start)
        log_variance = self._extract("log_one_minus_alphas_cumprod", t, x_start.ndim) + paddle.zeros_like(x_start)
        return mean, variance, log_variance

    def q_sample(self, x_start: paddle.Tensor, t, noise: Optional[paddle.Tensor] = None) -> paddle.Tensor:
        """Diffuse x_start to index t: sqrt(abar_t) x0 + sqrt(1 - abar_t) noise.

        Args:
            x_start: [B, C, ...]. t: [B] int64 indices into this process. noise: like x_start
                (None draws standard normal noise).

        Raises:
            ValueError: noise shaped differently from x_start.
        """
        if noise is None:
            noise = paddle.randn(x_start.shape, dtype=x_start.dtype)
        if list(noise.shape) != list(x_start.shape):
            raise ValueError(f"noise shape {list(noise.shape)} differs from x_start shape {list(x_start.shape)}")
        t = _as_index_tensor(t, x_start.shape[0])
        return (
            self._extract("sqrt_alphas_cumprod", t, x_start.ndim) * x_start
            + self._extract("sqrt_one_minus_alphas_cumprod", t, x_start.ndim) * noise
        )

    def add_noise(self, x0: paddle.Tensor, noise: paddle.Tensor, t) -> paddle.Tensor:
        """`q_sample` addressed by model-scale timesteps (values of `.timesteps`), diffusers-style.

        Args:
            x0: [B, C, T, H, W] clean latent. noise: same shape. t: int or [B] int tensor of
                timestep values of this process (for an un-respaced process, 0..999).

        Raises:
            ValueError: t not a timestep of this process; shapes differ.
        """
        idx = self.index_of(t).reshape([-1])
        return self.q_sample(x0, _as_index_tensor(idx, x0.shape[0]), noise)

    def q_posterior_mean_variance(self, x_start: paddle.Tensor, x_t: paddle.Tensor, t: paddle.Tensor):
        """Mean, variance, clipped log variance of q(x_{t-1} | x_t, x_0); t are [B] indices."""
        mean = (
            self._extract("posterior_mean_coef1", t, x_t.ndim) * x_start
            + self._extract("posterior_mean_coef2", t, x_t.ndim) * x_t
        )
        variance = self._extract("posterior_variance", t, x_t.ndim) + paddle.zeros_like(x_t)
        log_variance = self._extract("posterior_log_variance_clipped", t, x_t.ndim) + paddle.zeros_like(x_t)
        return mean, variance, log_variance

    def _predict_xstart_from_eps(self, x_t, t, eps):
        return (
            self._extract("sqrt_recip_alphas_cumprod", t, x_t.ndim) * x_t
            - self._extract("sqrt_recipm1_alphas_cumprod", t, x_t.ndim) * eps
        )

    # -- reverse process -----------------------------------------------------------------------
    def mean_variance_from_output(
        self,
        model_output: paddle.Tensor,
        x: paddle.Tensor,
        t: paddle.Tensor,
        clip_denoised: bool = False,
        denoised_fn: Optional[Callable] = None,
    ) -> Dict[str, paddle.Tensor]:
        """p(x_{t-1} | x_t) from a model output already computed.

        Args:
            model_output: [B, 2C, ...] (learn_sigma) or [B, C, ...]: eps (or x0) then the
                learned-range value in [-1, 1].
            x: [B, C, ...] latent at index t. t: [B] int64 indices into this process.
            clip_denoised: clamp the x0 prediction to [-1, 1].
            denoised_fn: applied to the x0 prediction before clipping.

        Returns:
            dict mean, variance, log_variance, pred_xstart, each [B, C, ...] float32.

        Raises:
            ValueError: model_output has the wrong channel count.
        """
        B, C = x.shape[:2]
        t = _as_index_tensor(t, B)
        want = 2 * C if self.learn_sigma else C
        if list(model_output.shape) != [B, want] + list(x.shape[2:]):
            raise ValueError(
                f"model_output must be [{B}, {want}, {', '.join(map(str, x.shape[2:]))}] for x of shape "
                f"{list(x.shape)} (learn_sigma={self.learn_sigma}), got {list(model_output.shape)}"
            )
        if self.learn_sigma:
            model_output, var_values = model_output[:, :C], model_output[:, C:]
            min_log = self._extract("posterior_log_variance_clipped", t, x.ndim)
            max_log = self._extract("log_betas", t, x.ndim)
            frac = (var_values + 1) / 2  # [-1, 1] -> [min_var, max_var]
            log_variance = frac * max_log + (1 - frac) * min_log
            variance = paddle.exp(log_variance)
        elif self.sigma_small:
            variance = self._extract("posterior_variance", t, x.ndim) + paddle.zeros_like(x)
            log_variance = self._extract("posterior_log_variance_clipped", t, x.ndim) + paddle.zeros_like(x)
        else:
            variance = self._extract("fixed_large_variance", t, x.ndim) + paddle.zeros_like(x)
            log_variance = self._extract("fixed_large_log_variance", t, x.ndim) + paddle.zeros_like(x)

        pred_xstart = model_output if self.predict_xstart else self._predict_xstart_from_eps(x, t, model_output)
        if denoised_fn is not None:
            pred_xstart = denoised_fn(pred_xstart)
        if clip_denoised:
            pred_xstart = paddle.clip(pred_xstart, -1.0, 1.0)
        mean, _, _ = self.q_posterior_mean_variance(pred_xstart, x, t)
        return {"mean": mean, "variance": variance, "log_variance": log_variance, "pred_xstart": pred_xstart}

    def p_mean_variance(
        self,
        model: Callable,
        x: paddle.Tensor,
        t: paddle.Tensor,
        clip_denoised: bool = True,
        denoised_fn: Optional[Callable] = None,
        model_kwargs: Optional[dict] = None,
    ) -> Dict[str, paddle.Tensor]:
        """Call the model and return p(x_{t-1} | x_t) (upstream `p_mean_variance`).

        Args:
            model: callable(x, timesteps, **model_kwargs) -> [B, 2C, ...]; it receives the
                model-scale timesteps `timestep_map[t]`.
            x: [B, C, ...]. t: [B] int64 indices into this process.
            clip_denoised, denoised_fn: see `mean_variance_from_output` (upstream default clip True).
            model_kwargs: extra model arguments.

        Returns:
            dict mean, variance, log_variance, pred_xstart.
        """
        t = _as_index_tensor(t, x.shape[0])
        out = model(x, self._model_timesteps(t), **(model_kwargs or {}))
        if isinstance(out, tuple):
            out = out[0]
        return self.mean_variance_from_output(out, x, t, clip_denoised=clip_denoised, denoised_fn=denoised_fn)

    def _model_timesteps(self, t: paddle.Tensor) -> paddle.Tensor:
        return paddle.gather(self._table("timestep_map", t.place), t.astype("int64"))

    def step(
        self,
        model_output: paddle.Tensor,
        t,
        sample: paddle.Tensor,
        noise: Optional[paddle.Tensor] = None,
        clip_denoised: bool = False,
    ) -> paddle.Tensor:
        """One ancestral denoising step x_t -> x_{t-1} (upstream `p_sample` without the mask).

        Args:
            model_output: [B, 2C, T, H, W] (guided) model output for `sample` at t.
            t: the current timestep, a value of `.timesteps` (int or tensor whose entries all equal it).
            sample: [B, C, T, H, W] current latent.
            noise: [B, C, T, H, W] standard normal noise for reproducibility (None draws it with
                paddle's global generator; unused at the last step).
            clip_denoised: clamp the x0 prediction to [-1, 1] (upstream sampling passes False).

        Returns:
            prev_sample [B, C, T, H, W].

        Raises:
            ValueError: t not a timestep of this process, or t entries that differ; shapes.
        """
        idx = self._single_index(t)
        B = sample.shape[0]
        out = self.mean_variance_from_output(
            model_output, sample, paddle.full([B], idx, dtype="int64"), clip_denoised=clip_denoised
        )
        if idx == 0:
            return out["mean"]
        if noise is None:
            noise = paddle.randn(sample.shape, dtype=sample.dtype)
        if list(noise.shape) != list(sample.shape):
            raise ValueError(f"noise shape {list(noise.shape)} differs from sample shape {list(sample.shape)}")
        return out["mean"] + paddle.exp(0.5 * out["log_variance"]) * noise

    def _single_index(self, t) -> int:
        if isinstance(t, paddle.Tensor):
            values = np.unique(t.numpy().reshape([-1]))
            if values.size != 1:
                raise ValueError(f"step() needs one timestep for the whole batch, got {values.tolist()}")
            t = values[0]
        return int(self.index_of(int(t)).numpy().reshape([-1])[0])

    # -- guidance ------------------------------------------------------------------------------
    def guidance(
        self,
        model_output_cond: paddle.Tensor,
        model_output_uncond: paddle.Tensor,
        cfg_scale: Optional[float] = None,
        cfg_channel: Optional[int] = None,
    ) -> paddle.Tensor:
        """Classifier-free guidance of the eps channels (see `classifier_free_guidance`).

        Args:
            model_output_cond, model_output_uncond: [B, 2C, ...] outputs with text / null text.
            cfg_scale: None = the scheduler's cfg_scale.
            cfg_channel: None = the scheduler's cfg_channel, or when that is None too, the eps
                channels (C with learn_sigma, all otherwise). Open-Sora 1.1 inference uses 3.
        """
        scale = self.cfg_scale if cfg_scale is None else cfg_scale
        channel = self.cfg_channel if cfg_channel is None else cfg_channel
        if channel is None:
            c_out = model_output_cond.shape[1]
            channel = c_out // 2 if self.learn_sigma else c_out
        return classifier_free_guidance(model_output_cond, model_output_uncond, scale, channel)

    # -- masked sampling -----------------------------------------------------------------------
    def apply_frame_mask(
        self,
        sample: paddle.Tensor,
        reference: paddle.Tensor,
        edit_ratio: paddle.Tensor,
        t,
        noise: Optional[paddle.Tensor] = None,
    ):
        """Prepare the model input of a masked step (call before the model; see `frame_mask_at_step`).

        Args:
            sample: [B, C, T, H, W] current latent.
            reference: [B, C, T, H, W] reference latent z0 (anything at frames with edit ratio 1).
            edit_ratio: [B, T] float in [0, 1].
            t: current timestep, a value of `.timesteps`.
            noise: [B, C, T, H, W] standard normal noise for the frames noised at this step (None
                draws it). Passing the initial noise latent keeps edit-ratio-1 frames identical to
                an unmasked run.

        Returns:
            (sample, x_mask): the latent to denoise, and [B, T] bool for the model (False = held).
        """
        _check_latents(sample, reference)
        B, _, T = sample.shape[:3]
        edit_ratio = _check_edit_ratio(edit_ratio, B, T)
        i = self.num_timesteps - 1 - self._single_index(t)
        fm = frame_mask_at_step(edit_ratio, i, self.num_timesteps)
        if noise is None:
            noise = paddle.randn(sample.shape, dtype=sample.dtype)
        renoised = self.q_sample(reference, paddle.full([B], self.num_timesteps - 1 - i, "int64"), noise)
        return blend_frames(sample, reference, renoised, noise, edit_ratio, fm), fm.x_mask

    def restore_held_frames(self, prev_sample: paddle.Tensor, reference: paddle.Tensor, edit_ratio: paddle.Tensor, t):
        """After `step`: reset frames held at this step to the reference (m == 0 frames end equal to it).

        Args:
            prev_sample: [B, C, T, H, W] output of `step`. reference: same shape. edit_ratio: [B, T].
            t: the timestep of the step just taken.
        """
        _check_latents(prev_sample, reference, "prev_sample")
        B, _, T = prev_sample.shape[:3]
        edit_ratio = _check_edit_ratio(edit_ratio, B, T)
        i = self.num_timesteps - 1 - self._single_index(t)
        return _restore(prev_sample, reference, frame_mask_at_step(edit_ratio, i, self.num_timesteps))

    # -- training ------------------------------------------------------------------------------
    def _vb_terms_bpd(self, model_output, x_start, x_t, t, mask=None):
        true_mean, _, true_log_var = self.q_posterior_mean_variance(x_start, x_t, t)
        out = self.mean_variance_from_output(model_output, x_t, t, clip_denoised=False)
        kl = normal_kl(true_mean, true_log_var, out["mean"], out["log_variance"])
        kl = mean_flat(kl, mask=mask) / math.log(2.0)
        decoder_nll = -discretized_gaussian_log_likelihood(
            x_start, means=out["mean"], log_scales=0.5 * out["log_variance"]
        )
        decoder_nll = mean_flat(decoder_nll, mask=mask) / math.log(2.0)
        # the first step's term is the decoder NLL, every other the KL to the posterior
        return paddle.where(t == 0, decoder_nll, kl)

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
        """Loss terms for one batch: eps MSE + variational bound of the learned variance.

        Args:
            model: callable(x_t, timesteps, **model_kwargs) -> [B, 2C, T, H, W]; receives
                `timestep_map[t]`. Pass `x_mask` in model_kwargs when training with a mask.
            x_start: [B, C, T, H, W] clean latents.
            t: [B] int64 indices into this process; None draws them uniformly.
            model_kwargs: extra model arguments (y, mask, x_mask, ...).
            noise: like x_start; None draws standard normal noise.
            mask: [B, T] bool, True = frame to generate. False frames are given clean (noised to
                index 0) and excluded from every loss term.
            weights: optional per-index weights [N] multiplying the MSE.

        Returns:
            dict loss, mse (and vb with learn_sigma), each [B] float32. With use_kl only loss.

        Raises:
            ValueError: shapes, a mask with use_kl (upstream asserts), or t outside [0, N).

        Follows upstream v1.1 `GaussianDiffusion.training_losses` (through the SpacedDiffusion
        model wrapper).
        """
        B = x_start.shape[0]
        if t is None:
            t = paddle.randint(0, self.num_timesteps, [B], dtype="int64")
        t = _as_index_tensor(t, B)
        t_np = t.numpy()
        if t_np.min() < 0 or t_np.max() >= self.num_timesteps:
            raise ValueError(f"t must be indices in [0, {self.num_timesteps}), got {t_np.tolist()}")
        model_kwargs = model_kwargs or {}
        if noise is None:
            noise = paddle.randn(x_start.shape, dtype=x_start.dtype)
        x_t = self.q_sample(x_start, t, noise)
        if mask is not None:
            if x_start.ndim != 5 or list(mask.shape) != [B, x_start.shape[2]]:
                frames = x_start.shape[2] if x_start.ndim == 5 else "?"
                raise ValueError(f"mask must be [B, T] = [{B}, {frames}], got {list(mask.shape)}")
            mask = mask.astype("bool")
            x_t0 = self.q_sample(x_start, paddle.zeros_like(t), noise)
            x_t = paddle.where(mask.unsqueeze(1).unsqueeze(-1).unsqueeze(-1).expand(x_t.shape), x_t, x_t0)

        model_output = model(x_t, self._model_timesteps(t), **model_kwargs)
        if isinstance(model_output, tuple):
            model_output = model_output[0]
        terms = {}
        if self.loss_type == "rescaled_kl":
            if mask is not None:
                raise ValueError("a frame mask is not supported with use_kl=True (upstream asserts the same)")
            terms["loss"] = self._vb_terms_bpd(model_output, x_start, x_t, t) * self.num_timesteps
            return terms

        C = x_start.shape[1]
        if self.learn_sigma:
            eps_out, var_values = model_output[:, :C], model_output[:, C:]
            # the VB term trains the variance only: the mean part is detached
            frozen = paddle.concat([eps_out.detach(), var_values], axis=1)
            terms["vb"] = self._vb_terms_bpd(frozen, x_start, x_t, t, mask=mask)
            if self.loss_type == "rescaled_mse":
                terms["vb"] = terms["vb"] * (self.num_timesteps / 1000.0)
            model_output = eps_out
        target = x_start if self.predict_xstart else noise
        sq = (target - model_output) ** 2
        if weights is not None:
            w = weights if isinstance(weights, paddle.Tensor) else paddle.to_tensor(np.asarray(weights))
            sq = paddle.gather(w, t).astype("float32").reshape([-1] + [1] * (x_start.ndim - 1)) * sq
        terms["mse"] = mean_flat(sq, mask=mask)
        terms["loss"] = terms["mse"] + terms["vb"] if "vb" in terms else terms["mse"]
        return terms
