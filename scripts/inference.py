"""Open-Sora text-to-video (also images with --num-frames 1, saved as PNG).

    python scripts/inference.py --prompt 'the digit 3 moves right.' --num-frames 16 --image-size 64 64

See `python scripts/inference.py --help` and the README for the prompt-suffix protocol
(`TEXT{"reference_path": "...", "mask_strategy": "..."}`). Flags are parsed and the work is done by
`utils.inference_cli`; this script only calls it.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from utils.inference_cli import main  # noqa: E402

if __name__ == "__main__":
    main(description=__doc__.split("\n")[0])
