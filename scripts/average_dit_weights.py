"""Average the weights of DiT folders trained from one start (see models/stdit/weight_average.py).

    python scripts/average_dit_weights.py --model STDiT3 \
        --inputs weights/default/dit exp_output/dit_d12_s23_video/dit_ema --output exp_output/dit_d12_soup20_23

The output folder (config.json + model.safetensors, float32 unless --dtype float16) loads with
`from_pretrained` like any other. Folders of different configs, bad weights or an unreadable input
stop with one error line; nothing is written then.
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, choices=["STDiT2", "STDiT3"], help="model class of the inputs")
    parser.add_argument("--inputs", required=True, nargs="+", help="2+ model folders (config.json + model.safetensors)")
    parser.add_argument("--weights", type=float, nargs="+", default=None,
                        help="one mixing weight per input, >= 0, summing to 1 (default: equal)")
    parser.add_argument("--dtype", default="float32", choices=["float16", "float32"], help="storage precision")
    parser.add_argument("--output", required=True, help="output folder (must not be one of the inputs)")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    if os.path.abspath(args.output) in {os.path.abspath(p) for p in args.inputs}:
        raise SystemExit(f"error: --output {args.output!r} is one of the inputs; write to a new folder")
    from utils.cpu import configure_cpu_runtime

    configure_cpu_runtime()
    from models.stdit import MODEL_CLASSES
    from models.stdit.weight_average import average_models, mixing_weights

    try:
        weights = mixing_weights(args.weights, len(args.inputs))
        models = [MODEL_CLASSES[args.model].from_pretrained(p) for p in args.inputs]
        new = average_models(models, weights)
    except (FileNotFoundError, ValueError) as e:
        raise SystemExit(f"error: {e}")
    out = new.save_pretrained(args.output, dtype=args.dtype)
    mix = ", ".join(f"{w:g} x {p}" for w, p in zip(weights, args.inputs))
    print(f"averaged {len(models)} {args.model} models ({mix}) -> {out}")


if __name__ == "__main__":
    main()
