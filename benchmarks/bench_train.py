"""Training throughput on the CPU: samples/s and peak memory of `scripts/trainer_opensora.py` in 1
and 2 processes, reading videos (VAE + T5 every step) or cached features (DiT only).

    python benchmarks/bench_train.py [--steps 20] [--frames 8] [--size 32]

Config: configs/train/tiny.json (fixture VAE and T5, one-block STDiT3), 8 clips of `--frames`
frames at `--size` x `--size` cut from Big Buck Bunny / cityCC0, batch 2 per process, no saving.
samples/s is paddlenlp's interval speed over the second half of the steps (after warm-up), counted
over all processes; peak memory is the largest resident set of any one process of the run
(`ru_maxrss` of its children). Feature extraction is timed once. Prints a table.
"""
import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

MEASURE = (
    "import resource, subprocess, sys, json; r = subprocess.run(sys.argv[1:], capture_output=True, text=True); "
    "print(json.dumps({'rc': r.returncode, 'out': r.stdout, 'err': r.stderr[-4000:], "
    "'rss_mb': resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}))"
)


def parse_args():
    p = argparse.ArgumentParser(description="training throughput benchmark")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--frames", type=int, default=8)
    p.add_argument("--size", type=int, default=32)
    return p.parse_args()


def make_clips(folder, frames, size):
    from utils import assets
    from utils.video_io import read_frames, resize_crop, save_video

    sources = [assets.bigbuckbunny_mp4(), assets.city_mpg()]
    rows = []
    for i in range(8):
        start = 10 * i
        clip = resize_crop(read_frames(sources[i % 2], list(range(start, start + frames))), size, size)
        save_video(clip, os.path.join(folder, f"clip{i}.mp4"), fps=12)
        rows.append(f"clip{i}.mp4,clip number {i}")
    path = os.path.join(folder, "clips.csv")
    with open(path, "w") as f:
        f.write("path,text\n" + "\n".join(rows) + "\n")
    return path


def run(cmd):
    """(stdout, peak RSS in MB of any process of the command)."""
    res = subprocess.run([sys.executable, "-c", MEASURE, sys.executable, *cmd], capture_output=True, text=True, cwd=ROOT)
    info = json.loads(res.stdout.strip().splitlines()[-1])
    if info["rc"] != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{info['out'][-2000:]}\n{info['err']}")
    return info["out"], info["rss_mb"]


def main():
    args = parse_args()
    script = os.path.join(ROOT, "scripts", "trainer_opensora.py")
    config = os.path.join(ROOT, "configs", "train", "tiny.json")
    with tempfile.TemporaryDirectory() as tmp:
        csv = make_clips(tmp, args.frames, args.size)
        common = ["--num_frames", str(args.frames), "--image_size", str(args.size), str(args.size),
                  "--max_steps", str(args.steps), "--logging_steps", str(args.steps // 2),
                  "--save_steps", str(10 * args.steps), "--mask_ratios", "", "--report_to", "none"]
        feats = os.path.join(tmp, "features")
        t0 = time.perf_counter()
        run([os.path.join(ROOT, "scripts", "extract_features.py"), config, "--data_path", csv,
             "--output_dir", feats, *common])
        extract_s = time.perf_counter() - t0
        rows = []
        for source in ("videos", "features"):
            data = ["--data_path", csv] if source == "videos" else ["--feature_path", feats]
            for nproc in (1, 2):
                out_dir = os.path.join(tmp, f"out-{source}-{nproc}")
                launch = ["-m", "paddle.distributed.launch", "--nproc_per_node", "2", "--log_dir",
                          os.path.join(tmp, f"log-{source}")] if nproc == 2 else []
                stdout, rss = run([*launch, script, config, *data, "--output_dir", out_dir, *common])
                speeds = re.findall(r"\| ([0-9.]+) samples/s", stdout)
                rows.append((source, nproc, float(speeds[-1]) if speeds else float("nan"), rss))
    print(f"training throughput, tiny STDiT3, {args.frames} frames at {args.size}x{args.size}, batch 2 per process, "
          f"{args.steps} steps")
    print(f"{'data':<10}{'processes':>10}{'samples/s':>12}{'peak RSS MB':>14}")
    for source, nproc, speed, rss in rows:
        print(f"{source:<10}{nproc:>10}{speed:>12.2f}{rss:>14.0f}")
    print(f"feature extraction (8 clips, once): {extract_s:.1f} s including start-up")


if __name__ == "__main__":
    main()
