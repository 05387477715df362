"""Grow a trained DiT folder to more blocks, same output (see models/stdit/depth_grow.py).

    python scripts/grow_dit_depth.py --model STDiT3 --input weights/default/dit \
        --depth 8 --output exp_output/dit_mnist_d8_init

The output folder (config.json + model.safetensors) loads with `from_pretrained` and serves as
`pretrained_model_path` for fine-tuning the deeper model. A depth below the model's stops with one
error line; nothing is written then.
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, choices=["STDiT2", "STDiT3"], help="model class of --input")
    parser.add_argument("--input", required=True, help="model folder (config.json + model.safetensors)")
    parser.add_argument("--depth", required=True, type=int, help="new number of blocks (>= the model's)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the new blocks' initial weights")
    parser.add_argument("--output", required=True, help="output folder")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    from utils.cpu import configure_cpu_runtime

    configure_cpu_runtime()
    from models.stdit import MODEL_CLASSES
    from models.stdit.depth_grow import grow_depth, trained_positions

    try:
        model = MODEL_CLASSES[args.model].from_pretrained(args.input)
        new = grow_depth(model, args.depth, seed=args.seed)
    except (FileNotFoundError, ValueError) as e:
        raise SystemExit(f"error: {e}")
    out = new.save_pretrained(args.output)
    positions = trained_positions(model.depth, new.depth)
    print(f"grew {args.model} depth {model.depth} -> {new.depth} (trained blocks at {positions}) -> {out}")


if __name__ == "__main__":
    main()
