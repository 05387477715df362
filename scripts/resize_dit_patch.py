"""Resize a trained DiT folder to a finer patch size (see models/stdit/patch_resize.py).

    python scripts/resize_dit_patch.py --model STDiT3 --input exp_output/dit_mnist/dit_ema \
        --patch-size 1 2 2 --output exp_output/dit_mnist_p2_init

The output folder (config.json + model.safetensors) loads with `from_pretrained` and serves as
`pretrained_model_path` for fine-tuning at the new patch size. A patch size that does not divide
the model's stops with one error line; nothing is written then.
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, choices=["STDiT2", "STDiT3"], help="model class of --input")
    parser.add_argument("--input", required=True, help="model folder (config.json + model.safetensors)")
    parser.add_argument("--patch-size", required=True, type=int, nargs=3, metavar=("T", "H", "W"),
                        help="new patch size; must divide the model's on every axis")
    parser.add_argument("--output", required=True, help="output folder")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    from utils.cpu import configure_cpu_runtime

    configure_cpu_runtime()
    from models.stdit import MODEL_CLASSES
    from models.stdit.patch_resize import resize_patch

    try:
        model = MODEL_CLASSES[args.model].from_pretrained(args.input)
        new = resize_patch(model, args.patch_size)
    except (FileNotFoundError, ValueError) as e:
        raise SystemExit(f"error: {e}")
    out = new.save_pretrained(args.output)
    print(f"resized {args.model} patch {list(model.patch_size)} -> {list(new.patch_size)} "
          f"(input_sq_size {model.config['input_sq_size']} -> {new.config['input_sq_size']}) -> {out}")


if __name__ == "__main__":
    main()
