"""Rectified-flow velocity loss of DiT checkpoints on cached clips, at fixed timesteps and noise.

    python benchmarks/eval_velocity_loss.py --feature-path FEATURES --ckpt-path A [B ...]
        [--num-clips 48] [--timesteps 200 500 800 950] [--seed 0] [--batch-size 8]

A low-variance way to compare checkpoints of one model (sampled-video scores over 50 videos move
by several points between runs): every checkpoint sees the same clips (rows 0..num_clips-1 of a
folder written by `scripts/extract_features.py`, e.g. the held-out split), the same noise
(`paddle.seed(seed)`) and the same timesteps (0..1000). Two numbers per timestep: `t` (every
latent frame noised) and `t|f0` (latent frame 0 given clean through `x_mask`, the
image-to-video condition; the loss covers the other frames). Loss = `RFlow.training_losses`
(mean squared velocity error per clip), averaged over clips. Prints a table (rows: checkpoints).

Raises (exit 2, one line): a missing feature folder / checkpoint, or --num-clips larger than the
folder.
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def parse_args(argv=None):
    p = argparse.ArgumentParser(description="velocity loss of DiT checkpoints on cached clips")
    p.add_argument("--feature-path", required=True, help="folder written by scripts/extract_features.py")
    p.add_argument("--ckpt-path", nargs="+", required=True, help="DiT model folders (config.json + model.safetensors)")
    p.add_argument("--num-clips", type=int, default=48, help="rows 0..N-1 of the feature folder")
    p.add_argument("--timesteps", type=float, nargs="+", default=[200.0, 500.0, 800.0, 950.0], help="in 0..1000")
    p.add_argument("--seed", type=int, default=0, help="seeds the noise")
    p.add_argument("--batch-size", type=int, default=8)
    return p.parse_args(argv)


def velocity_losses(model, scheduler, batch, noise, timesteps, batch_size):
    """{"t" or "t|f0" label: mean loss} for one model; batch from `collate_features` (numpy)."""
    import numpy as np
    import paddle

    n = batch["latent"].shape[0]
    out = {}
    for tv in timesteps:
        for cond in (False, True):
            losses = []
            for s in range(0, n, batch_size):
                e = min(n, s + batch_size)
                B = e - s
                kw = dict(
                    y=paddle.to_tensor(batch["y"][s:e]),
                    mask=paddle.to_tensor(batch["y_mask"][s:e]),
                    height=paddle.to_tensor(batch["height"][s:e].astype("float32")),
                    width=paddle.to_tensor(batch["width"][s:e].astype("float32")),
                    num_frames=paddle.to_tensor(batch["num_frames"][s:e].astype("float32")),
                    fps=paddle.to_tensor(batch["fps"][s:e]),
                )
                mask = None
                if cond:
                    T = batch["latent"].shape[2]
                    mask = paddle.to_tensor(np.arange(T)[None].repeat(B, 0) > 0)  # frame 0 clean
                    kw["x_mask"] = mask
                with paddle.no_grad():
                    loss = scheduler.training_losses(
                        model, paddle.to_tensor(batch["latent"][s:e]), t=paddle.full([B], tv),
                        model_kwargs=kw, noise=noise[s:e], mask=mask,
                    )["loss"]
                losses.append(loss.numpy())
            out[f"{int(tv)}{'|f0' if cond else ''}"] = float(np.concatenate(losses).mean())
    return out


def main(argv=None):
    args = parse_args(argv)
    from utils.cpu import configure_cpu_runtime

    configure_cpu_runtime()
    import paddle

    from schedulers.rflow import RFlow
    from trainer.features import FeatureDataset, collate_features
    from utils.config import build_model

    try:
        data = FeatureDataset(args.feature_path)
        if not 1 <= args.num_clips <= len(data):
            raise ValueError(f"--num-clips {args.num_clips}: accepted 1..{len(data)} (clips in {args.feature_path!r})")
        for path in args.ckpt_path:
            if not os.path.isdir(path):
                raise FileNotFoundError(f"checkpoint folder not found: {path!r}")
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    batch = collate_features([data[i] for i in range(args.num_clips)])
    paddle.seed(args.seed)
    noise = paddle.randn(batch["latent"].shape)
    scheduler = RFlow()
    rows = []
    for path in args.ckpt_path:
        model = build_model({"type": "STDiT3"}, ckpt_path=path)
        model.eval()
        rows.append((path, velocity_losses(model, scheduler, batch, noise, args.timesteps, args.batch_size)))
    labels = list(rows[0][1])
    print(f"velocity loss, {args.num_clips} clips of {args.feature_path}, noise seed {args.seed} (t|f0: frame 0 clean)")
    print("| checkpoint | " + " | ".join(f"t={k}" for k in labels) + " |")
    print("|---|" + "---|" * len(labels))
    for path, res in rows:
        print(f"| {path} | " + " | ".join(f"{res[k]:.4f}" for k in labels) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
