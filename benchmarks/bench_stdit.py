"""Median forward and forward+backward seconds of STDiT2 and STDiT3 on the CPU.

    python benchmarks/bench_stdit.py [--threads 2] [--runs 5] [--flash-attn]

Config (the one upstream PyTorch was timed with on this machine kind): depth 4, hidden 288,
4 heads, patch (1, 2, 2), latent B=2 x 4 x 8 x 32 x 32, caption 32 channels, 20 tokens.
1 warm-up, then `runs` timed runs; forward under no_grad, forward+backward with
loss = mean(out^2) and parameter gradients. Prints a table.
"""
import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

UPSTREAM_SECONDS = {"STDiT2": (0.36, 1.03), "STDiT3": (0.51, 1.46)}  # PyTorch, same config/machine kind


def parse_args():
    p = argparse.ArgumentParser(description="STDiT speed benchmark")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--flash-attn", action="store_true", help="enable_flash_attn=True (SDPA path)")
    return p.parse_args()


def timed(fn, runs):
    fn()  # warm-up
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main():
    args = parse_args()
    from utils.cpu import configure_cpu_runtime

    env = configure_cpu_runtime(args.threads)
    import paddle

    from models.stdit import STDiT2, STDiT3

    config = dict(
        depth=4,
        hidden_size=288,
        num_heads=4,
        patch_size=(1, 2, 2),
        in_channels=4,
        caption_channels=32,
        model_max_length=20,
        input_size=(8, 32, 32),
        input_sq_size=512,
        qk_norm=True,
        enable_flash_attn=args.flash_attn,
    )
    paddle.seed(0)
    B = 2
    x = paddle.randn([B, 4, 8, 32, 32])
    t = paddle.to_tensor([10.0, 500.0])
    y = paddle.randn([B, 1, 20, 32])
    mask = paddle.to_tensor([[1] * 20, [1] * 13 + [0] * 7], dtype="int64")
    info = dict(
        height=paddle.full([B], 256.0), width=paddle.full([B], 256.0), ar=paddle.full([B], 1.0),
        num_frames=paddle.full([B], 8.0), fps=paddle.full([B], 24.0),
    )
    rows = []
    for cls in (STDiT2, STDiT3):
        model = cls(**config)
        model.eval()

        def forward():
            with paddle.no_grad():
                model(x, t, y, mask=mask, **info).numpy()

        def forward_backward():
            out = model(x, t, y, mask=mask, **info)
            loss = out.pow(2).mean()
            loss.backward()
            model.clear_gradients()

        rows.append((cls.__name__, timed(forward, args.runs), timed(forward_backward, args.runs)))

    print(f"runs={args.runs} flash_attn={args.flash_attn} paddle={paddle.__version__} env={env}")
    print(f"| model  | forward s | fwd+bwd s | upstream fwd s | upstream fwd+bwd s |")
    print(f"|--------|-----------|-----------|----------------|--------------------|")
    for name, f, fb in rows:
        uf, ufb = UPSTREAM_SECONDS[name]
        print(f"| {name} | {f:9.3f} | {fb:9.3f} | {uf:14.2f} | {ufb:18.2f} |")


if __name__ == "__main__":
    main()
