"""The Open-Sora generation pipeline: text encoder + VAE + STDiT + scheduler, loop visible here.

    prompts -> encode_text -> y, mask ─┐
    references -> encode_references ───┼─> plan (mask strategy) -> z_ref, edit_ratio
    noise ─────────────────────────────┴─> denoise: for t in scheduler.timesteps: model -> guidance -> step
                                                     -> decode -> frames [B, 3, T, H, W] in [-1, 1]

Long video: clip k > 0 takes the last `condition_frame_length` frames of clip k-1 (re-encoded by
the VAE) as its fixed first frames; the result is clip 0 followed by every later clip minus those
frames (SPEC.md §4). Nothing but the output frames is kept across loops or samples.
"""
import logging
from dataclasses import dataclass, field
from typing import List, Optional, Sequence

import numpy as np
import paddle
from tqdm.auto import tqdm

from models.text_encoder import text_preprocessing
from schedulers import IDDPM, RFlow

from .mask_strategy import (
    FramePlan,
    apply_mask_plan,
    condition_entries_for_loop,
    output_frame_slice,
    plan_mask,
    total_frames,
)
from .prompts import PromptPlan
from .video_io import load_reference

logger = logging.getLogger(__name__)

DEFAULT_CONDITION_FRAME_LENGTH = 4  # the same default as the command line (utils.inference_cli)


@dataclass
class GenerationResult:
    """Output of `OpenSoraPipeline.generate`.

    Attributes:
        videos: per prompt, float32 [3, T_total, H, W] in [-1, 1] (T_total = N + (K-1)(N-L)).
        edit_ratios: per prompt, float32 [T_total]: the edit ratio each output frame was generated
            with (0 = fixed to a reference, 1 = generated), for `--mark-condition-frames`.
    """

    videos: List[np.ndarray] = field(default_factory=list)
    edit_ratios: List[np.ndarray] = field(default_factory=list)


class OpenSoraPipeline:
    """Text-to-video / image-to-video / long-video generation with Open-Sora components.

    Args:
        model: `STDiT2` or `STDiT3` (eval mode is set here).
        vae: `VideoAutoencoderKL` (a per-frame VAE: latent frames = pixel frames).
        text_encoder: an encoder with `encode(texts) -> {"y": [B,1,L,C], "mask": [B,L]}`.
        scheduler: `IDDPM` or `RFlow`.
        clean_captions: apply upstream's caption cleaning before the text encoder (T5).
    """

    def __init__(self, model, vae, text_encoder, scheduler, clean_captions=True):
        if tuple(vae.patch_size)[0] != 1:
            raise ValueError(f"the pipeline needs a per-frame VAE (temporal factor 1), got patch {vae.patch_size}")
        if vae.out_channels != model.in_channels:
            raise ValueError(
                f"VAE latent channels {vae.out_channels} differ from the model's in_channels {model.in_channels}"
            )
        self.model = model
        self.vae = vae
        self.text_encoder = text_encoder
        self.scheduler = scheduler
        self.clean_captions = clean_captions
        self.model.eval()

    # ------------------------------------------------------------------ pieces
    def check_size(self, height, width):
        """Raise ValueError unless height and width are positive multiples of the VAE x patch factor."""
        factor = self.vae.spatial_factor * self.model.patch_size[1]
        factor_w = self.vae.spatial_factor * self.model.patch_size[2]
        if height < 1 or width < 1 or height % factor or width % factor_w:
            raise ValueError(
                f"image size {height}x{width} is not accepted: height must be a multiple of {factor} and width "
                f"of {factor_w} (VAE factor {self.vae.spatial_factor} x patch {self.model.patch_size[1:]})"
            )

    def encode_text(self, texts):
        """texts: list of B strings -> (y [B, 1, L, C] float32, mask [B, L] int64)."""
        if self.clean_captions:
            texts = text_preprocessing(list(texts))
        out = self.text_encoder.encode(list(texts))
        return out["y"], out["mask"]

    def encode_video(self, x, seed):
        """Pixels [B, 3, T, H, W] in [-1, 1] -> latent [B, C, T, h, w] (seeded VAE sample)."""
        return self.vae.encode(x, seed=seed)

    def encode_references(self, paths: Sequence[str], height, width, seed):
        """Load each reference (image or video) at height x width and encode it.

        Returns:
            list of latents [C, R, h, w] (R = 1 for an image).

        Raises:
            FileNotFoundError / ValueError: a missing or unreadable reference file (named).
        """
        latents = []
        for i, path in enumerate(paths):
            frames = load_reference(path, height, width)  # [3, R, H, W] in [-1, 1]
            x = paddle.to_tensor(frames[None])
            latents.append(self.encode_video(x, seed + 7919 * (i + 1))[0])
        return latents

    def decode(self, z):
        """Latent [B, C, T, h, w] -> pixels [B, 3, T, H, W] clipped to [-1, 1]."""
        return self.vae.decode(z).clip(-1.0, 1.0)

    def model_conditions(self, batch, height, width, num_frames, fps):
        """Per-sample size / frames / fps conditioning as upstream's inference passes it."""
        full = lambda v: paddle.full([batch], float(v), dtype="float32")  # noqa: E731
        return dict(height=full(height), width=full(width), ar=full(height / width), num_frames=full(num_frames), fps=full(fps))

    # --------------------------------------------------------------- the loop
    @paddle.no_grad()
    def denoise(
        self,
        z,
        y,
        mask,
        conditions,
        num_sampling_steps,
        cfg_scale,
        rng,
        z_ref=None,
        edit_ratio=None,
        progress_desc=None,
    ):
        """Run the scheduler's sampling steps with classifier-free guidance.

        Args:
            z: initial noise [B, C, T, h, w].
            y, mask: caption states [B, 1, L, C_txt] and mask [B, L].
            conditions: `model_conditions(...)` dict ([B] tensors).
            num_sampling_steps: N.
            cfg_scale: guidance scale (1 = no guidance effect, still computed).
            rng: numpy Generator for the per-step noise.
            z_ref: [B, C, T, h, w] reference latent (frames with edit ratio < 1 are taken from it).
            edit_ratio: [B, T] float32 tensor or None (no conditioning).

        Returns:
            the denoised latent [B, C, T, h, w].
        """
        B = z.shape[0]
        sch = self.scheduler
        if isinstance(sch, RFlow):
            sch.set_timesteps(
                num_sampling_steps,
                height=float(conditions["height"][0]),
                width=float(conditions["width"][0]),
                num_frames=float(conditions["num_frames"][0]),
            )
        else:
            sch.set_timesteps(num_sampling_steps)
        y_in = paddle.concat([y, self.model.null_caption(B).astype(y.dtype)], axis=0)  # [2B, 1, L, C]
        cond_in = {k: paddle.concat([v, v]) for k, v in conditions.items()}
        initial_noise = z
        for t in tqdm(sch.timesteps, desc=progress_desc or "sampling", leave=False):
            x_mask = None
            if edit_ratio is not None:
                z, x_mask = sch.apply_frame_mask(z, z_ref, edit_ratio, t, noise=initial_noise)
                x_mask = paddle.concat([x_mask, x_mask])
            out = self.model(
                paddle.concat([z, z]),
                paddle.full([2 * B], float(t), dtype="float32"),
                y_in,
                mask=mask,
                x_mask=x_mask,
                **cond_in,
            )
            cond, uncond = out.chunk(2, axis=0)
            guided = sch.guidance(cond, uncond, cfg_scale)
            if isinstance(sch, IDDPM):
                noise = paddle.to_tensor(rng.standard_normal(z.shape).astype(np.float32))
                z = sch.step(guided, t, z, noise=noise)
            else:
                z = sch.step(guided, t, z)
            if edit_ratio is not None:
                z = sch.restore_held_frames(z, z_ref, edit_ratio, t)
        return z

    # --------------------------------------------------------------- generate
    @paddle.no_grad()
    def generate(
        self,
        plans: Sequence[PromptPlan],
        height,
        width,
        num_frames,
        fps=24,
        num_sampling_steps=50,
        cfg_scale=7.0,
        seed=0,
        loop=1,
        condition_frame_length=DEFAULT_CONDITION_FRAME_LENGTH,
    ) -> GenerationResult:
        """Generate one (long) video per prompt plan, as one batch.

        Args:
            plans: parsed prompts (`utils.prompts.parse_prompts(..., loop=loop)`).
            height, width: pixels; num_frames: N frames per clip; fps: frames/s the model is told.
            num_sampling_steps, cfg_scale: sampling settings.
            seed: all randomness (initial noise, step noise, VAE samples) derives from it.
            loop: K clips; condition_frame_length: L frames carried from clip to clip (L < N if K > 1).

        Returns:
            `GenerationResult` with videos [3, N + (K-1)(N-L), H, W] in [-1, 1].

        Raises:
            ValueError: size not divisible, L >= N with K > 1, plans with another loop count, bad
                references (missing / unreadable files name the path).
        """
        self.check_size(height, width)
        total = total_frames(num_frames, loop, condition_frame_length)
        for plan in plans:
            if len(plan.texts) != loop:
                raise ValueError(f"prompt {plan.prompt!r} was parsed for {len(plan.texts)} loops, not {loop}")
        rng = np.random.default_rng(seed)
        B = len(plans)
        refs = [self.encode_references(p.reference_paths, height, width, seed) for p in plans]
        conditions = self.model_conditions(B, height, width, num_frames, fps)
        h, w = height // self.vae.spatial_factor, width // self.vae.spatial_factor
        C = self.vae.out_channels
        outputs = [[] for _ in range(B)]
        ratios = [[] for _ in range(B)]
        previous = None  # per sample, latent [C, L, h, w] of the previous clip's last L frames
        for k in range(loop):
            texts = [p.texts[k] for p in plans]
            y, mask = self.encode_text(texts)
            frame_plans: List[FramePlan] = []
            for b, p in enumerate(plans):
                entries = list(p.entries)
                lengths = [int(r.shape[1]) for r in refs[b]]
                if k > 0:
                    entries += condition_entries_for_loop(k, condition_frame_length, len(refs[b]))
                    lengths.append(condition_frame_length)
                frame_plans.append(plan_mask(entries, k, num_frames, lengths))
            z = paddle.to_tensor(rng.standard_normal([B, C, num_frames, h, w]).astype(np.float32))
            z_ref, edit_ratio = None, None
            if any(fp.has_condition for fp in frame_plans):
                z_ref = paddle.zeros_like(z)
                ratio_rows = []
                for b, fp in enumerate(frame_plans):
                    sample_refs = list(refs[b]) + ([previous[b]] if k > 0 and previous is not None else [])
                    row_ref, row_ratio = apply_mask_plan(z_ref[b].clone(), sample_refs, fp)
                    z_ref[b] = row_ref
                    ratio_rows.append(row_ratio)
                edit_ratio = paddle.stack(ratio_rows).astype("float32")  # [B, T]
            z = self.denoise(
                z, y, mask, conditions, num_sampling_steps, cfg_scale, rng, z_ref, edit_ratio,
                progress_desc=f"clip {k + 1}/{loop}",
            )
            video = self.decode(z)  # [B, 3, N, H, W]
            keep = output_frame_slice(k, condition_frame_length)
            for b in range(B):
                outputs[b].append(video[b].numpy()[:, keep])
                ratios[b].append(frame_plans[b].edit_ratio[keep])
            if k + 1 < loop and condition_frame_length > 0:
                tail = video[:, :, num_frames - condition_frame_length :]
                latent = self.encode_video(tail, int(rng.integers(2**31)))
                previous = [latent[b] for b in range(B)]
            del video, z, z_ref
        result = GenerationResult()
        for b in range(B):
            result.videos.append(np.concatenate(outputs[b], axis=1))
            result.edit_ratios.append(np.concatenate(ratios[b]).astype(np.float32))
            assert result.videos[-1].shape[1] == total
        return result
