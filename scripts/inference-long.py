"""Open-Sora long video: image-to-video, connect, extend, edit and looped generation through prompt suffixes.

    python scripts/inference-long.py --prompt 'the digit 3 moves right.' --num-frames 16 --image-size 64 64

See `python scripts/inference-long.py --help` and the README for the prompt-suffix protocol
(`TEXT{"reference_path": "...", "mask_strategy": "..."}`). Flags are parsed and the work is done by
`utils.inference_cli`; this script only calls it.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from utils.inference_cli import main  # noqa: E402

if __name__ == "__main__":
    main(description=__doc__.split("\n")[0])
