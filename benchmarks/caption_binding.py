"""Does the model tie each digit of a caption to its own direction? Prints a table.

Text-to-video with two digits needs the pairing of words: "the digit 8 moves left and the digit 1
moves down" and "the digit 8 moves down and the digit 1 moves left" hold the same words, paired the
other way. This benchmark takes held-out two-digit captions (two different digits, two different
directions; `scripts/make_moving_mnist.py --split heldout --digits-per-clip 2 --seed DATA_SEED`)
and two variants of each:

- swapped: the two directions exchanged (the same words, the other pairing);
- replaced: both directions replaced by the two directions the caption does not name (other words).

1. Text encoder: the relative change of the per-token states, ||s - s'|| / ||s||, between a caption
   and each variant, averaged over the token positions whose token is the same in both (the digits,
   "the", "moves", "and"): how much of the pairing reaches the tokens a cross-attention key is made of.
2. Model (skipped with `--text-only`): the caption and both variants are generated from the same
   initial noise (same seed, same batch position); the mean absolute difference of the videos (grey
   levels 0..255) to the swapped and to the replaced variant, and their ratio. A model that reads
   the caption as a bag of words gives a ratio near 0 (swapping changes nothing); a model that
   pairs the words moves each digit the other way when swapped, as far as when replaced (ratio
   near 1).

Model flags are those of `scripts/inference.py` (`--config`, `--ckpt-path`, ...). Exit status 2
with one line on stderr for bad flags or inputs.
"""

import argparse
import json
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

DIRECTIONS = ("down", "left", "right", "up")  # the 4-direction caption vocabulary


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_argument_group("model (as scripts/inference.py)")
    g.add_argument("--config", default=None, help="inference config JSON (default: configs/default.json)")
    g.add_argument("--ckpt-path", default=None, help="model folder overriding the config's")
    g.add_argument("--scheduler", choices=["iddpm", "rflow"], default=None, help="override the config's scheduler")
    g.add_argument("--num-sampling-steps", type=int, default=None)
    g.add_argument("--cfg-scale", type=float, default=None)
    g.add_argument("--seed", type=int, default=0, help="generation seed (the same for a caption and its variants)")
    g.add_argument("--batch-size", type=int, default=8, help="captions generated together")
    g = p.add_argument_group("captions and outputs")
    g.add_argument("--num-captions", type=int, default=8, help="two-digit held-out captions")
    g.add_argument("--data-seed", type=int, default=0, help="seed of the held-out clips (make_moving_mnist --seed)")
    g.add_argument("--text-only", action="store_true", help="measure the text encoder only (no model, no video)")
    g.add_argument("--out", default=None, help="results JSON (default: none)")
    args = p.parse_args(argv)
    for name in ("num_captions", "batch_size"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    return args


def caption_variants(caption):
    """(swapped, replaced) variants of a two-digit caption with two different directions.

    Args:
        caption: "the digit A moves X and the digit B moves Y", A != B, X != Y, both in `DIRECTIONS`.

    Returns:
        ("the digit A moves Y and the digit B moves X", "the digit A moves P and the digit B moves Q"),
        P < Q the two directions of `DIRECTIONS` that are neither X nor Y.

    Raises:
        ValueError: not such a caption.
    """
    from utils.digit_eval import parse_caption
    from video_datasets.moving_mnist import caption as make_caption

    targets = parse_caption(caption)
    if (len(targets) != 2 or targets[0][0] == targets[1][0] or targets[0][1] == targets[1][1]
            or any(d not in DIRECTIONS for _, d in targets)):
        raise ValueError(f"caption {caption!r} must name two different digits with two different directions of {DIRECTIONS}")
    (a, x), (b, y) = targets
    p, q = [d for d in DIRECTIONS if d not in (x, y)]
    build = lambda da, db: make_caption([{"label": a, "direction": da}, {"label": b, "direction": db}])  # noqa: E731
    return build(y, x), build(p, q)


def heldout_captions(count, data_seed, num_frames, size):
    """The first `count` held-out two-digit captions naming two different digits with two different
    directions (list of str; a caption naming one digit twice reads the same swapped)."""
    from video_datasets.moving_mnist import indices_by_label, load_digits, make_clip, split_indices
    from utils.digit_eval import parse_caption

    images, labels = load_digits()
    pools = indices_by_label(labels, split_indices(len(labels), "heldout"))
    captions, k = [], 0
    while len(captions) < count:
        if k >= 100 * count + 100:
            raise ValueError(f"found only {len(captions)} two-digit held-out captions with two digits and two directions")
        _, text, _ = make_clip(images, pools, data_seed, "heldout", k, num_frames=num_frames, size=size,
                               digits_per_clip="2", directions=4)
        k += 1
        (a, x), (b, y) = parse_caption(text)
        if a != b and x != y:
            captions.append(text)
    return captions


def token_state_change(text_encoder, captions, variants):
    """Mean relative change of the per-token states at the positions whose token is unchanged.

    Args:
        text_encoder: a text encoder with `tokenize(texts)` and `encode(texts)` (MiniLM or T5).
        captions, variants: lists of N strings, pairwise compared.

    Returns:
        float: mean over pairs and unchanged positions of ||s - s'|| / ||s|| (0 = the variant's
        words do not reach the unchanged tokens at all).
    """
    import numpy as np

    ids_a, mask_a = text_encoder.tokenize(list(captions))
    ids_b, mask_b = text_encoder.tokenize(list(variants))
    y_a = text_encoder.encode(list(captions))["y"][:, 0].numpy()  # [N, L, C]
    y_b = text_encoder.encode(list(variants))["y"][:, 0].numpy()
    changes = []
    for i in range(len(captions)):
        same = (ids_a[i] == ids_b[i]) & (mask_a[i] == 1) & (mask_b[i] == 1)
        diff = np.linalg.norm(y_a[i][same] - y_b[i][same], axis=-1)
        changes += list(diff / np.maximum(np.linalg.norm(y_a[i][same], axis=-1), 1e-12))
    return float(np.mean(changes))


def run(args, log=print):
    import numpy as np

    from utils.cpu import import_paddle_quietly

    import_paddle_quietly()
    from benchmarks.eval_moving_mnist import generate, inference_settings
    from utils.config import build_text_encoder
    from utils.inference_cli import load_pipeline

    config, settings = inference_settings(args)
    H, W = settings["image_size"]
    if args.ckpt_path and not os.path.isdir(args.ckpt_path):
        raise FileNotFoundError(f"--ckpt-path folder not found: {args.ckpt_path!r}")
    captions = heldout_captions(args.num_captions, args.data_seed, settings["num_frames"], H)
    swapped, replaced = zip(*[caption_variants(c) for c in captions])
    results = dict(num_captions=len(captions), captions=captions, swapped=list(swapped), replaced=list(replaced))

    if args.text_only:
        text_encoder = build_text_encoder(config["text_encoder"], settings["model_max_length"])
    else:
        t0 = time.perf_counter()
        pipe = load_pipeline(config, settings, args.ckpt_path)
        pipe.check_size(H, W)
        log(f"model loaded in {time.perf_counter() - t0:.1f} s")
        text_encoder = pipe.text_encoder
    results["text_change_swapped"] = token_state_change(text_encoder, captions, swapped)
    results["text_change_replaced"] = token_state_change(text_encoder, captions, replaced)
    if args.text_only:
        return results

    videos = {}
    for name, texts in (("caption", captions), ("swapped", swapped), ("replaced", replaced)):
        videos[name], seconds = generate(pipe, list(texts), settings, log)  # same seed: same noises
        results[f"seconds_{name}"] = seconds
    diff = lambda u, v: float(np.abs(u.astype(np.float32) - v.astype(np.float32)).mean())  # noqa: E731
    results["video_diff_swapped"] = [diff(a, b) for a, b in zip(videos["caption"], videos["swapped"])]
    results["video_diff_replaced"] = [diff(a, b) for a, b in zip(videos["caption"], videos["replaced"])]
    results["video_ratio"] = float(np.mean(results["video_diff_swapped"]) / max(np.mean(results["video_diff_replaced"]), 1e-12))
    results["settings"] = {k: settings[k] for k in ("num_sampling_steps", "cfg_scale", "seed", "batch_size")}
    results["ckpt_path"] = args.ckpt_path
    return results


def print_table(results):
    """Print the measures as a markdown table."""
    import numpy as np

    rows = [
        ("two-digit held-out captions", f"{results['num_captions']}"),
        ("text: state change at unchanged tokens, swapped directions", f"{results['text_change_swapped']:.3f}"),
        ("text: state change at unchanged tokens, replaced directions", f"{results['text_change_replaced']:.3f}"),
    ]
    if "video_ratio" in results:
        rows += [
            ("video: mean abs difference to the swapped caption (0..255)", f"{np.mean(results['video_diff_swapped']):.2f}"),
            ("video: mean abs difference to the replaced caption (0..255)", f"{np.mean(results['video_diff_replaced']):.2f}"),
            ("video: swapped / replaced (0 = bag of words, ~1 = paired)", f"{results['video_ratio']:.2f}"),
            ("seconds per video", f"{results['seconds_caption'] / results['num_captions']:.1f}"),
        ]
    print("| measure | value |")
    print("|---|---|")
    for name, value in rows:
        print(f"| {name} | {value} |")


def main(argv=None):
    args = parse_args(argv)
    from utils.inference_cli import UsageError

    try:
        results = run(args, log=lambda line: print(line, flush=True))
    except (UsageError, ValueError, FileNotFoundError) as error:
        print(f"caption_binding: error: {error}", file=sys.stderr)
        return 2
    print_table(results)
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            json.dump(results, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
