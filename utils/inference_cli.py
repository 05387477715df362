"""The command line shared by `scripts/inference.py` and `scripts/inference-long.py`.

Flags follow upstream Open-Sora / the PaddleMIX example; `--config` names the components and
defaults (flags override it); `--explain` prints the per-loop conditioning plan as JSON and exits
without loading any model. Bad input exits with status 2 and one line on stderr; outputs are
written to a temporary name and renamed.
"""
import argparse
import json
import os
import sys

DEFAULT_CONDITION_FRAME_LENGTH = 4  # frames carried from clip to clip when --condition-frame-length is not given
DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs", "default.json")
DEFAULTS = dict(
    num_frames=16,
    image_size=[64, 64],
    fps=24,
    frame_interval=1,
    num_sampling_steps=50,
    cfg_scale=7.0,
    loop=1,
    condition_frame_length=None,
    batch_size=1,
    num_sample=1,
    seed=42,
    micro_batch_size=None,
    model_max_length=None,
    dtype="fp32",
)


class UsageError(Exception):
    """Bad user input: printed as one line, exit status 2."""


def build_parser(description):
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--config", default=None, help=f"inference config JSON (default: {DEFAULT_CONFIG})")
    p.add_argument("--ckpt-path", default=None, help="model folder (converted upstream or this project's training output)")
    p.add_argument("--scheduler", choices=["iddpm", "rflow"], default=None, help="override the config's scheduler type")
    p.add_argument("--prompt", nargs="+", default=None, help="one or more prompts, each TEXT or TEXT{json suffix}")
    p.add_argument("--prompt-path", default=None, help="a text file with one prompt per line")
    p.add_argument("--num-frames", type=int, default=None, help="frames per clip")
    p.add_argument("--image-size", type=int, nargs=2, metavar=("H", "W"), default=None, help="height width in pixels")
    p.add_argument("--fps", type=int, default=None, help="frames per second the model is conditioned on")
    p.add_argument("--frame-interval", type=int, default=None, help="saved fps = fps // frame_interval")
    p.add_argument("--num-sampling-steps", type=int, default=None)
    p.add_argument("--cfg-scale", type=float, default=None, help="classifier-free guidance scale")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=None, help="prompts generated together")
    p.add_argument("--num-sample", type=int, default=None, help="videos per prompt (seeds seed, seed+1, ...)")
    p.add_argument("--save-dir", default="./samples/samples", help="output folder")
    p.add_argument("--sample-name", default=None, help="file name prefix (default: sample)")
    p.add_argument("--prompt-as-path", action="store_true", help="name files after the prompt text")
    p.add_argument("--loop", type=int, default=None, help="clips per prompt (long video)")
    p.add_argument("--condition-frame-length", type=int, default=None, help="frames carried from clip to clip")
    p.add_argument("--reference-path", nargs="+", default=None, help="per prompt: references joined by ';'")
    p.add_argument("--mask-strategy", nargs="+", default=None, help="per prompt: a mask strategy")
    p.add_argument("--dtype", choices=["fp32", "fp16", "bf16"], default=None, help="fp16/bf16 need a GPU")
    p.add_argument("--micro-batch-size", type=int, default=None, help="frames the VAE processes at once")
    p.add_argument("--model-max-length", type=int, default=None, help="text tokens")
    p.add_argument("--explain", action="store_true", help="print the per-loop plan as JSON and exit (no model is loaded)")
    p.add_argument("--mark-condition-frames", action="store_true", help="coloured border on fixed / edited frames")
    return p


def _positive(name, value, minimum=1):
    if value is None or value < minimum:
        raise UsageError(f"--{name.replace('_', '-')} must be >= {minimum}, got {value}")


def resolve_settings(args):
    """Merge DEFAULTS < config "generation" < flags; load the config (without building models)."""
    config_path = args.config
    if config_path is None and not args.explain:
        if not os.path.isfile(DEFAULT_CONFIG):
            raise UsageError(f"no --config given and the default config {DEFAULT_CONFIG!r} is missing")
        config_path = DEFAULT_CONFIG
    if config_path is None and os.path.isfile(DEFAULT_CONFIG):
        config_path = DEFAULT_CONFIG
    from utils.config import load_config

    config = load_config(config_path) if config_path else None
    settings = dict(DEFAULTS)
    if config:
        for key in ("num_sampling_steps", "cfg_scale"):  # the scheduler section may set these
            if key in config["scheduler"]:
                settings[key] = config["scheduler"][key]
        settings.update(config["generation"])
    for key in DEFAULTS:
        value = getattr(args, key, None)
        if value is not None:
            settings[key] = value
    if config and args.scheduler and args.scheduler != config["scheduler"]["type"]:
        config["scheduler"] = {"type": args.scheduler}
    for key in ("num_frames", "fps", "frame_interval", "num_sampling_steps", "loop", "batch_size", "num_sample"):
        _positive(key, settings[key])
    h, w = settings["image_size"]
    if h < 1 or w < 1:
        raise UsageError(f"--image-size must be positive, got {h} {w}")
    if settings["condition_frame_length"] is None:
        settings["condition_frame_length"] = min(DEFAULT_CONDITION_FRAME_LENGTH, max(settings["num_frames"] - 1, 0))
    L, N, K = settings["condition_frame_length"], settings["num_frames"], settings["loop"]
    if L < 0 or (K > 1 and L >= N):
        raise UsageError(f"--condition-frame-length must be in 0..{N - 1} (< --num-frames {N}), got {L}")
    if settings["dtype"] != "fp32":
        import paddle

        if not paddle.is_compiled_with_cuda():
            raise UsageError(f"--dtype {settings['dtype']} needs a GPU build of Paddle; on the CPU use fp32")
    return config, settings


def read_prompts(args):
    """Prompts from --prompt and/or --prompt-path (one per non-empty line)."""
    prompts = list(args.prompt or [])
    if args.prompt_path:
        if not os.path.isfile(args.prompt_path):
            raise UsageError(f"--prompt-path file not found: {args.prompt_path!r}")
        with open(args.prompt_path) as f:
            prompts += [line.strip() for line in f if line.strip()]
    if not prompts:
        raise UsageError("give at least one prompt with --prompt or --prompt-path")
    return prompts


def reference_frames(path):
    """Frame count of a reference file (1 for an image); a missing / unreadable file is a UsageError."""
    from utils.video_io import video_info

    if not os.path.isfile(path):
        raise UsageError(f"reference file not found: {path!r}")
    try:
        return int(video_info(path)["num_frames"])
    except (ValueError, OSError) as e:
        raise UsageError(f"reference file {path!r} cannot be read: {e}") from None


def explain(plans, settings):
    """The per-loop plan of every prompt (latent frames = pixel frames with the per-frame VAE)."""
    from utils.mask_strategy import condition_entries_for_loop, output_frame_slice, plan_mask, total_frames

    N, K, L = settings["num_frames"], settings["loop"], settings["condition_frame_length"]
    out = dict(
        num_frames=N,
        image_size=list(settings["image_size"]),
        loop=K,
        condition_frame_length=L,
        total_frames=total_frames(N, K, L),
        prompts=[],
    )
    offset_of_clip = [0] + [N + (k - 1) * (N - L) for k in range(1, K)]
    for plan in plans:
        lengths = [reference_frames(p) for p in plan.reference_paths]
        entry = dict(prompt=plan.prompt, references=[dict(ref_id=i, path=p, frames=n) for i, (p, n) in enumerate(zip(plan.reference_paths, lengths))], loops=[])
        for k in range(K):
            names = list(plan.reference_paths)
            ref_lengths = list(lengths)
            entries = list(plan.entries)
            if k > 0:
                entries += condition_entries_for_loop(k, L, len(names))
                names.append(f"previous clip (last {L} frames)")
                ref_lengths.append(L)
            fp = plan_mask(entries, k, N, ref_lengths)
            keep = output_frame_slice(k, L)
            kept = list(range(N))[keep]
            entry["loops"].append(
                dict(
                    loop=k,
                    text=plan.texts[k],
                    edit_ratio=[round(float(r), 6) for r in fp.edit_ratio],
                    sources=[
                        None if s is None else dict(ref_id=s[0], ref_frame=s[1], reference=names[s[0]]) for s in fp.sources
                    ],
                    output_frames=[offset_of_clip[k] + i - kept[0] for i in kept] if kept else [],
                )
            )
        out["prompts"].append(entry)
    return out


def run(args, description):
    from utils.prompts import get_save_path, parse_prompts

    prompts = read_prompts(args)
    config, settings = resolve_settings(args)
    try:
        plans = parse_prompts(prompts, settings["loop"], args.reference_path, args.mask_strategy)
    except ValueError as e:
        raise UsageError(str(e)) from None
    # every reference must exist and be readable, and every mask entry fit, before a model loads
    try:
        plan_json = explain(plans, settings)
    except ValueError as e:
        raise UsageError(str(e)) from None
    if args.explain:
        print(json.dumps(plan_json, indent=1))
        return []
    if args.ckpt_path and not os.path.isdir(args.ckpt_path):
        raise UsageError(f"--ckpt-path folder not found: {args.ckpt_path!r}")

    pipe = load_pipeline(config, settings, args.ckpt_path)
    pipe.check_size(*settings["image_size"])
    from utils.video_io import mark_frames, save_video, from_model_range

    saved = []
    H, W = settings["image_size"]
    save_fps = max(1, settings["fps"] // settings["frame_interval"])
    index = 0
    for start in range(0, len(plans), settings["batch_size"]):
        batch = plans[start : start + settings["batch_size"]]
        for k in range(settings["num_sample"]):
            result = pipe.generate(
                batch,
                H,
                W,
                settings["num_frames"],
                fps=settings["fps"],
                num_sampling_steps=settings["num_sampling_steps"],
                cfg_scale=settings["cfg_scale"],
                seed=settings["seed"] + k,
                loop=settings["loop"],
                condition_frame_length=settings["condition_frame_length"],
            )
            for j, (video, ratio) in enumerate(zip(result.videos, result.edit_ratios)):
                frames = from_model_range(video)  # [T, H, W, 3] uint8
                if args.mark_condition_frames:
                    frames = mark_frames(frames, ratio)
                base = get_save_path(
                    args.save_dir, args.sample_name, index + j, batch[j].texts[0], args.prompt_as_path,
                    settings["num_sample"], k,
                )
                path = save_video(frames, base + (".png" if frames.shape[0] == 1 else ".mp4"), fps=save_fps)
                print(f"saved {path}")
                saved.append(path)
        index += len(batch)
    return saved


def load_pipeline(config, settings, ckpt_path=None):
    """Build the pipeline from a loaded config (flags in `settings` override it)."""

    from utils.config import build_model, build_scheduler, build_text_encoder, build_vae
    from utils.pipeline import OpenSoraPipeline

    model = build_model(config["model"], ckpt_path)
    if settings["dtype"] != "fp32":
        model.to(dtype="float16" if settings["dtype"] == "fp16" else "bfloat16")
    vae = build_vae(config["vae"], settings["micro_batch_size"])
    text_encoder = build_text_encoder(config["text_encoder"], settings["model_max_length"])
    scheduler = build_scheduler(config["scheduler"], settings["num_sampling_steps"], settings["cfg_scale"])
    return OpenSoraPipeline(model, vae, text_encoder, scheduler)


def main(argv=None, description="Open-Sora video generation"):
    """Entry point of both inference scripts; returns the saved paths. Exit status 2 on bad input."""
    from utils.cpu import import_paddle_quietly

    import_paddle_quietly()
    args = build_parser(description).parse_args(argv)
    try:
        return run(args, description)
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2)
