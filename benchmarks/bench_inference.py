"""Long-video generation cost for K = 1, 2, 4 loops: seconds per sampling step, total seconds, peak memory.

    python benchmarks/bench_inference.py [--config configs/default.json] [--loops 1 2 4] [--steps 10]

Each K runs in its own process (peak RSS is per process) with the same prompt, size and seed,
through the same pipeline `scripts/inference-long.py` uses, with an image reference at frame 0.
Without --config, the embedded default model is used if present; otherwise a tiny set of
components is built from ../shared/fixtures (fixture VAE and T5, a tiny random STDiT3).
Prints a table; time should grow linearly in K and peak memory stay flat.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description="long-video generation benchmark")
    p.add_argument("--config", default=None)
    p.add_argument("--loops", type=int, nargs="+", default=[1, 2, 4])
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--num-frames", type=int, default=16)
    p.add_argument("--condition-frame-length", type=int, default=4)
    p.add_argument("--image-size", type=int, nargs=2, default=None)
    p.add_argument("--worker", type=int, default=None, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def tiny_fixture_config(folder):
    """Write a config with the fixture VAE / T5 and a tiny random STDiT3 into `folder`."""
    from utils.cpu import configure_cpu_runtime

    configure_cpu_runtime()
    import paddle

    from models.stdit import STDiT3

    hf = os.path.join(os.path.dirname(ROOT), "shared", "fixtures", "hf_tiny")
    if not os.path.isdir(hf):
        raise SystemExit(f"no --config and no fixtures at {hf}")
    paddle.seed(0)
    STDiT3(depth=2, hidden_size=96, num_heads=4, caption_channels=64, model_max_length=12, input_sq_size=64).save_pretrained(
        os.path.join(folder, "stdit3")
    )
    config = {
        "model": {"type": "STDiT3", "from_pretrained": "stdit3"},
        "vae": {"type": "VideoAutoencoderKL", "from_pretrained": os.path.join(hf, "vae_diffusers")},
        "text_encoder": {
            "type": "t5",
            "from_pretrained": os.path.join(hf, "t5_hf"),
            "tokenizer_path": os.path.join(hf, "spm", "spiece.model"),
            "model_max_length": 12,
        },
        "scheduler": {"type": "rflow", "num_sampling_steps": 10, "cfg_scale": 4.0},
        "generation": {"num_frames": 16, "image_size": [32, 32], "fps": 8},
    }
    path = os.path.join(folder, "tiny.json")
    with open(path, "w") as f:
        json.dump(config, f)
    return path


def worker(args):
    """One K in this process: prints a JSON line with the timings and peak RSS."""
    import resource
    import time

    from utils.cpu import import_paddle_quietly

    import_paddle_quietly()
    from utils import assets
    from utils.config import load_config
    from utils.inference_cli import build_parser, load_pipeline, resolve_settings
    from utils.prompts import parse_prompts
    from utils.video_io import read_frames, save_image

    flags = ["--config", args.config, "--prompt", "x", "--num-sampling-steps", str(args.steps)]
    if args.image_size:
        flags += ["--image-size", *map(str, args.image_size)]
    _, settings = resolve_settings(build_parser("bench").parse_args(flags))
    H, W = settings["image_size"]
    t0 = time.perf_counter()
    pipe = load_pipeline(load_config(args.config), settings)
    load_s = time.perf_counter() - t0
    with tempfile.TemporaryDirectory() as d:
        ref = save_image(read_frames(assets.skimage_image("astronaut"))[0], os.path.join(d, "ref.png"))
        prompt = 'a moving picture{"reference_path": "%s", "mask_strategy": "0"}' % ref
        plans = parse_prompts([prompt], args.worker)
        t0 = time.perf_counter()
        pipe.generate(
            plans, H, W, args.num_frames, fps=settings["fps"], num_sampling_steps=args.steps,
            cfg_scale=settings["cfg_scale"], seed=0, loop=args.worker,
            condition_frame_length=args.condition_frame_length,
        )
        total = time.perf_counter() - t0
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(dict(loop=args.worker, load_s=load_s, total_s=total, steps=args.steps * args.worker, peak_mb=peak_mb)))


def main():
    args = parse_args()
    if args.worker is not None:
        return worker(args)
    with tempfile.TemporaryDirectory() as tmp:
        config = args.config
        if config is None:
            default = os.path.join(ROOT, "configs", "default.json")
            config = default if os.path.isfile(default) else tiny_fixture_config(tmp)
        rows = []
        for k in args.loops:
            cmd = [sys.executable, os.path.abspath(__file__), "--worker", str(k), "--config", config, "--steps", str(args.steps),
                   "--num-frames", str(args.num_frames), "--condition-frame-length", str(args.condition_frame_length)]
            if args.image_size:
                cmd += ["--image-size", *map(str, args.image_size)]
            res = subprocess.run(cmd, capture_output=True, text=True)
            if res.returncode != 0:
                raise SystemExit(f"K={k} failed:\n{res.stderr[-3000:]}")
            rows.append(json.loads(res.stdout.strip().splitlines()[-1]))
    base = rows[0]
    print(f"config: {config}  frames/clip={args.num_frames}  L={args.condition_frame_length}  steps/clip={args.steps}")
    print("| K | output frames | total s | s / step | total / K=1 | peak MB | peak / K=1 |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        frames = args.num_frames + (r["loop"] - 1) * (args.num_frames - args.condition_frame_length)
        print(
            f"| {r['loop']} | {frames} | {r['total_s']:.2f} | {r['total_s'] / r['steps']:.3f} | "
            f"{r['total_s'] / base['total_s']:.2f} | {r['peak_mb']:.0f} | {r['peak_mb'] / base['peak_mb']:.3f} |"
        )


if __name__ == "__main__":
    main()
