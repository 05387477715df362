"""Store a DiT folder's weights in another precision (float16 halves `model.safetensors`).

    python scripts/cast_dit_weights.py --model STDiT3 --input exp_output/dit_mnist_d8_video/dit_ema \
        --dtype float16 --output exp_output/dit_mnist_d8_fp16

The output folder loads with `from_pretrained` like any other: the weights are cast back to the
model's float32 on load, so only their rounding changes (the largest change is printed). Bad
flags or an unreadable input stop with one error line; nothing is written then.
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, choices=["STDiT2", "STDiT3"], help="model class of --input")
    parser.add_argument("--input", required=True, help="model folder (config.json + model.safetensors)")
    parser.add_argument("--dtype", required=True, choices=["float16", "float32"], help="storage precision")
    parser.add_argument("--output", required=True, help="output folder (must differ from --input)")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    if os.path.abspath(args.input) == os.path.abspath(args.output):
        raise SystemExit(f"error: --output {args.output!r} is the input folder; write to a new folder")
    from utils.cpu import configure_cpu_runtime

    configure_cpu_runtime()
    import numpy as np

    from models.stdit import MODEL_CLASSES
    from models.stdit.checkpoint import WEIGHTS_NAME

    cls = MODEL_CLASSES[args.model]
    try:
        model = cls.from_pretrained(args.input)
    except (FileNotFoundError, ValueError) as e:
        raise SystemExit(f"error: {e}")
    out = model.save_pretrained(args.output, dtype=args.dtype)
    reloaded = cls.from_pretrained(out)
    before, after = model.state_dict(), reloaded.state_dict()
    change = max(float(np.abs(before[k].numpy() - after[k].numpy()).max()) for k in before)
    size = lambda folder: os.path.getsize(os.path.join(folder, WEIGHTS_NAME)) / 2**20  # noqa: E731
    print(f"{args.model} weights stored as {args.dtype}: {size(args.input):.1f} MiB -> {size(out):.1f} MiB, "
          f"largest weight change {change:.2e} -> {out}")


if __name__ == "__main__":
    main()
