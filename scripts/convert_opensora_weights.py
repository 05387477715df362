"""Convert an upstream Open-Sora STDiT checkpoint (PyTorch) into a folder this port loads.

    python scripts/convert_opensora_weights.py --model STDiT2 \
        --input OpenSora-STDiT-v2-stage3/model.safetensors \
        --config OpenSora-STDiT-v2-stage3/config.json --output ./weights/stdit2-stage3

The output folder (config.json + model.safetensors) loads with `STDiT2.from_pretrained(DIR)` and
with `--ckpt-path DIR` in the inference scripts. Missing / unexpected keys or a shape mismatch stop
the conversion with a message listing them; nothing is written then.
"""
import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, choices=["STDiT2", "STDiT3"], help="upstream model class")
    parser.add_argument(
        "--input", required=True, help="upstream weights: model.safetensors, a .pt/.pth/.bin state dict, or a folder"
    )
    parser.add_argument("--config", required=True, help="upstream config.json (STDiT2Config / STDiT3Config keywords)")
    parser.add_argument("--output", required=True, help="output folder")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    from utils.cpu import configure_cpu_runtime

    configure_cpu_runtime()
    from models.stdit import MODEL_CLASSES
    from models.stdit.checkpoint import load_upstream_state_dict

    try:
        with open(args.config) as f:
            config = json.load(f)
    except FileNotFoundError:
        raise SystemExit(f"error: config file not found: {args.config!r}")
    except json.JSONDecodeError as e:
        raise SystemExit(f"error: {args.config!r} is not valid JSON: {e}")
    if config.get("model_type", args.model) != args.model:
        raise SystemExit(f"error: {args.config!r} describes a {config['model_type']} model, not {args.model}")
    try:
        state = load_upstream_state_dict(args.input)
        model = MODEL_CLASSES[args.model].from_upstream(config, state)
    except (FileNotFoundError, ValueError, ImportError) as e:
        raise SystemExit(f"error: {e}")
    out = model.save_pretrained(args.output)
    n = sum(int(p.size) for p in model.parameters())
    print(f"converted {args.model} ({n / 1e6:.2f}M parameters) -> {out}")


if __name__ == "__main__":
    main()
