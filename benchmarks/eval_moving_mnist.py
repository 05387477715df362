"""Quality of a Moving-MNIST model: digit accuracy, motion accuracy, image conditioning, speed.

    python benchmarks/eval_moving_mnist.py [--config configs/default.json] [--num-videos 50] \
        [--classifier-cache samples/eval/digit_classifier.pdparams] [--out samples/eval/eval_moving_mnist.json]

1. A digit classifier trained only on the held-out MNIST digits (`utils.digit_eval`; 400 train
   it, 100 measure it, and so do the 4,500 training-split digits it never sees).
2. Text-to-video: clips 0..N-1 of the held-out split (`video_datasets.moving_mnist.make_clip`, the
   clips `scripts/make_moving_mnist.py --split heldout --seed DATA_SEED` writes, here at the
   config's frame count and size) give the prompts: their captions.
3. Image-to-video: one-digit held-out clips; the prompt is the caption with the clip's frame 0 as
   the reference at frame 0 (`{"reference_path": ..., "mask_strategy": "0"}`).
4. Scores (`utils.digit_eval.score_video` / `score_conditioning`): digit accuracy (the digits the
   classifier reads in the video are the caption's), motion accuracy (each digit moves as
   captioned over the first half of the clip), frame-0 PSNR against the reference, the
   reference's digit read in the last frame, and seconds per video. The real held-out clips
   are scored the same way: the ceiling of each metric.
5. Prints a table with the targets, writes the numbers (and every clip's reading) as JSON and a
   contact sheet of a few generations (rows: videos, columns: frames).

Exit status 2 with one line on stderr for bad flags or inputs.
"""
import argparse
import json
import os
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

TARGETS = {  # the targets: key -> (threshold, unit)
    "digit_accuracy": (0.80, "%"),
    "motion_accuracy": (0.70, "%"),
    "psnr_frame0_db": (25.0, "dB"),
    "last_frame_digit_accuracy": (0.80, "%"),
}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_argument_group("model (as scripts/inference.py)")
    g.add_argument("--config", default=None, help="inference config JSON (default: configs/default.json)")
    g.add_argument("--ckpt-path", default=None, help="model folder overriding the config's")
    g.add_argument("--scheduler", choices=["iddpm", "rflow"], default=None, help="override the config's scheduler")
    g.add_argument("--num-sampling-steps", type=int, default=None)
    g.add_argument("--cfg-scale", type=float, default=None)
    g.add_argument("--seed", type=int, default=None, help="generation seed (batch b uses seed + its first clip index)")
    g.add_argument("--batch-size", type=int, default=None, help="prompts generated together")
    g = p.add_argument_group("evaluation set")
    g.add_argument("--num-videos", type=int, default=50, help="text-to-video prompts (held-out clips)")
    g.add_argument("--num-conditioned", type=int, default=None,
                   help="image-to-video prompts (one-digit held-out clips; default: --num-videos; 0: skip)")
    g.add_argument("--data-seed", type=int, default=0, help="seed of the held-out clips (make_moving_mnist --seed)")
    g.add_argument("--digits-per-clip", choices=["1", "2", "mixed"], default="mixed", help="text-to-video clips")
    g.add_argument("--directions", type=int, choices=(4, 8), default=4, help="caption direction vocabulary")
    g = p.add_argument_group("classifier and measurement")
    g.add_argument("--classifier-cache", default=None,
                   help="a .pdparams file: loaded if present, else the trained classifier is written there")
    g.add_argument("--classifier-epochs", type=int, default=60)
    g.add_argument("--classifier-seed", type=int, default=0)
    g.add_argument("--threshold", type=float, default=None, help="foreground grey level in 0..1 (default 0.3)")
    g = p.add_argument_group("outputs")
    g.add_argument("--out", default=os.path.join("samples", "eval_moving_mnist.json"), help="results JSON")
    g.add_argument("--contact-sheet", default=os.path.join("assets", "contact_sheet.png"),
                   help="PNG of a few generations (empty string: none)")
    g.add_argument("--sheet-rows", type=int, default=6, help="videos in the contact sheet (half t2v, half i2v)")
    g.add_argument("--save-videos", default=None, help="folder for every generated mp4 and reference PNG")
    args = p.parse_args(argv)
    if args.num_conditioned is None:
        args.num_conditioned = args.num_videos
    for name in ("num_videos", "classifier_epochs"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    for name in ("num_conditioned", "sheet_rows"):
        if getattr(args, name) < 0:
            p.error(f"--{name.replace('_', '-')} must be >= 0")
    if args.threshold is not None and not 0.0 < args.threshold < 1.0:
        p.error("--threshold must lie strictly between 0 and 1")
    return args


def inference_settings(args):
    """(config, settings) as the inference scripts resolve them for these flags."""
    from utils.inference_cli import build_parser, resolve_settings

    flags = []
    for name in ("config", "scheduler", "num_sampling_steps", "cfg_scale", "seed", "batch_size"):
        value = getattr(args, name)
        if value is not None:
            flags += ["--" + name.replace("_", "-"), str(value)]
    return resolve_settings(build_parser("eval").parse_args(flags))


def heldout_clips(count, seed, num_frames, size, digits_per_clip, directions):
    """Clips 0..count-1 of the held-out split: list of (frames uint8 [T, S, S, 3], caption)."""
    from video_datasets.moving_mnist import indices_by_label, load_digits, make_clip, split_indices

    images, labels = load_digits()
    pools = indices_by_label(labels, split_indices(len(labels), "heldout"))
    clips = []
    for k in range(count):
        frames, text, _ = make_clip(images, pools, seed, "heldout", k, num_frames=num_frames, size=size,
                                    digits_per_clip=digits_per_clip, directions=directions)
        clips.append((frames, text))
    return clips


def generate(pipe, prompts, settings, log):
    """Generate one video per prompt in batches; returns (uint8 [T, H, W, 3] videos, seconds)."""
    from utils.prompts import parse_prompts
    from utils.video_io import from_model_range

    H, W = settings["image_size"]
    videos, seconds = [], 0.0
    step = settings["batch_size"]
    for start in range(0, len(prompts), step):
        plans = parse_prompts(prompts[start:start + step], 1)
        t0 = time.perf_counter()
        result = pipe.generate(
            plans, H, W, settings["num_frames"], fps=settings["fps"],
            num_sampling_steps=settings["num_sampling_steps"], cfg_scale=settings["cfg_scale"],
            seed=settings["seed"] + start, loop=1, condition_frame_length=settings["condition_frame_length"],
        )
        seconds += time.perf_counter() - t0
        videos += [from_model_range(v) for v in result.videos]
        log(f"generated {len(videos)}/{len(prompts)} ({seconds:.1f} s)")
    return videos, seconds


def _percent(x):
    return "-" if x is None else f"{100 * x:.1f}%"


def _value(key, x):
    if x is None:
        return "-"
    return f"{x:.1f} dB" if key == "psnr_frame0_db" else _percent(x)


def print_table(results):
    gen, real = results["generated"], results["real_clips"]
    rows = [
        ("digit accuracy (t2v clips)", "digit_accuracy"),
        ("motion accuracy (t2v clips)", "motion_accuracy"),
        ("frame-0 PSNR vs reference (i2v)", "psnr_frame0_db"),
        ("last-frame digit (i2v clips)", "last_frame_digit_accuracy"),
        ("digit accuracy (t2v, per digit)", "digit_accuracy_per_digit"),
        ("motion accuracy (t2v, per digit)", "motion_accuracy_per_digit"),
        ("digit accuracy (t2v, one-digit clips)", "digit_accuracy_one_digit"),
        ("motion accuracy (t2v, one-digit clips)", "motion_accuracy_one_digit"),
        ("digit accuracy (t2v, two-digit clips)", "digit_accuracy_two_digit"),
        ("motion accuracy (t2v, two-digit clips)", "motion_accuracy_two_digit"),
        ("digit accuracy (i2v clips)", "i2v_digit_accuracy"),
        ("motion accuracy (i2v clips)", "i2v_motion_accuracy"),
    ]
    print("| metric | generated | real clips | target | pass |")
    print("|---|---|---|---|---|")
    for name, key in rows:
        target = ""
        verdict = ""
        if key in TARGETS:
            threshold, unit = TARGETS[key]
            target = f">= {threshold:.0f} dB" if unit == "dB" else f">= {100 * threshold:.0f}%"
            verdict = {True: "yes", False: "no", None: "-"}[results["passed"].get(key)]
        print(f"| {name} | {_value(key, gen.get(key))} | {_value(key, real.get(key))} | {target} | {verdict} |")
    t = results["timings"]
    print(f"| seconds per video (t2v) | {t['t2v_seconds_per_video']:.2f} | | | |")
    if t.get("i2v_seconds_per_video") is not None:
        print(f"| seconds per video (i2v) | {t['i2v_seconds_per_video']:.2f} | | | |")
    c = results["classifier"]
    how = "loaded from the cache" if c["loaded"] else f"trained in {c['train_seconds']:.0f} s"
    print(f"classifier ({how}): {_percent(c['validation_accuracy'])} on {c['num_validation']} held-out validation "
          f"digits, {_percent(c['unseen_train_split_accuracy'])} on the {c['num_unseen_train_split']} "
          f"training-split digits it never saw")
    s = results["settings"]
    print(f"{gen['num_videos']} t2v + {gen.get('num_conditioned', 0)} i2v videos, {s['num_frames']} frames "
          f"{s['image_size'][0]}x{s['image_size'][1]}, {s['num_sampling_steps']} {s['scheduler']} steps, "
          f"cfg {s['cfg_scale']}, batch {s['batch_size']}; model load {t['load_seconds']:.1f} s")


def _json_safe(score):
    out = dict(score)
    if "psnr_frame0" in out:
        from utils.digit_eval import PSNR_CAP

        out["psnr_frame0"] = round(min(out["psnr_frame0"], PSNR_CAP), 3)
    return out


def run(args, log=print):
    from utils.cpu import import_paddle_quietly

    import_paddle_quietly()
    from utils import digit_eval
    from utils.inference_cli import load_pipeline
    from utils.video_io import from_model_range, load_reference, make_contact_sheet, save_image, save_video

    threshold = digit_eval.THRESHOLD if args.threshold is None else args.threshold
    config, settings = inference_settings(args)
    H, W = settings["image_size"]
    T = settings["num_frames"]
    if H != W:
        raise ValueError(f"Moving-MNIST clips are square; the image size is {H}x{W}")
    if args.ckpt_path and not os.path.isdir(args.ckpt_path):
        raise FileNotFoundError(f"--ckpt-path folder not found: {args.ckpt_path!r}")
    t2v_clips = heldout_clips(args.num_videos, args.data_seed, T, H, args.digits_per_clip, args.directions)
    i2v_clips = heldout_clips(args.num_conditioned, args.data_seed, T, H, "1", args.directions)
    motion_frames = T // 2  # the clips' min_run: each caption holds for at least this many frame steps

    classifier, info = digit_eval.load_or_train_classifier(
        args.classifier_cache, epochs=args.classifier_epochs, seed=args.classifier_seed, threshold=threshold,
    )
    log(f"classifier: validation {_percent(info['validation_accuracy'])}, "
        f"unseen training-split digits {_percent(info['unseen_train_split_accuracy'])}")

    def score(t2v_videos, i2v_videos, i2v_references):
        """(summary, per-clip readings) of a text-to-video and an image-to-video set."""
        t2v = [digit_eval.score_video(v, text, classifier, args.directions, motion_frames, threshold)
               for v, (_, text) in zip(t2v_videos, t2v_clips)]
        i2v = [digit_eval.score_video(v, text, classifier, args.directions, motion_frames, threshold)
               for v, (_, text) in zip(i2v_videos, i2v_clips)]
        cond = [digit_eval.score_conditioning(v, ref, text, classifier, threshold)
                for v, ref, (_, text) in zip(i2v_videos, i2v_references, i2v_clips)]
        summary = digit_eval.summarize(t2v, cond)
        if i2v:
            i2v_summary = digit_eval.summarize(i2v)
            summary.update(i2v_digit_accuracy=i2v_summary["digit_accuracy"],
                           i2v_motion_accuracy=i2v_summary["motion_accuracy"])
        return summary, dict(t2v=t2v, i2v=[_json_safe({**a, **b}) for a, b in zip(i2v, cond)])

    real, _ = score([f for f, _ in t2v_clips], [f for f, _ in i2v_clips], [f[0] for f, _ in i2v_clips])
    real.pop("psnr_frame0_db", None)  # frame 0 of a real clip is its own reference

    t0 = time.perf_counter()
    pipe = load_pipeline(config, settings, args.ckpt_path)
    pipe.check_size(H, W)
    load_seconds = time.perf_counter() - t0
    log(f"model loaded in {load_seconds:.1f} s")

    with tempfile.TemporaryDirectory() as tmp:
        ref_dir = args.save_videos or tmp
        os.makedirs(ref_dir, exist_ok=True)
        t2v_videos, t2v_seconds = generate(pipe, [text for _, text in t2v_clips], settings, log)
        i2v_prompts, references = [], []
        for k, (frames, text) in enumerate(i2v_clips):
            ref = save_image(frames[0], os.path.join(ref_dir, f"i2v_{k:03d}_reference.png"))
            i2v_prompts.append(text + json.dumps({"reference_path": ref, "mask_strategy": "0"}))
            references.append(from_model_range(load_reference(ref, H, W))[0])  # as the pipeline reads it
        i2v_videos, i2v_seconds = generate(pipe, i2v_prompts, settings, log) if i2v_prompts else ([], 0.0)
    if args.save_videos:
        for name, videos in (("t2v", t2v_videos), ("i2v", i2v_videos)):
            for k, video in enumerate(videos):
                save_video(video, os.path.join(args.save_videos, f"{name}_{k:03d}.mp4"), fps=settings["fps"])

    generated, readings = score(t2v_videos, i2v_videos, references)

    sheet_rows = None
    if args.contact_sheet and args.sheet_rows:
        n_t2v = min(len(t2v_videos), (args.sheet_rows + 1) // 2)
        n_i2v = min(len(i2v_videos), args.sheet_rows - n_t2v)
        picked = t2v_videos[:n_t2v] + i2v_videos[:n_i2v]
        save_image(make_contact_sheet(picked), args.contact_sheet)
        sheet_rows = [f"t2v: {text}" for _, text in t2v_clips[:n_t2v]] + \
                     [f"i2v (frame 0 given): {text}" for _, text in i2v_clips[:n_i2v]]
        log(f"wrote {args.contact_sheet}")

    results = dict(
        config=config["path"],
        ckpt_path=args.ckpt_path,
        settings=dict(
            num_frames=T, image_size=[H, W], fps=settings["fps"], num_sampling_steps=settings["num_sampling_steps"],
            cfg_scale=settings["cfg_scale"], seed=settings["seed"], batch_size=settings["batch_size"],
            scheduler=config["scheduler"]["type"],
        ),
        evaluation=dict(
            split="heldout", data_seed=args.data_seed, digits_per_clip=args.digits_per_clip,
            conditioned_digits_per_clip="1", directions=args.directions, motion_frames=motion_frames,
            threshold=threshold,
        ),
        classifier=info,
        generated=generated,
        real_clips=real,
        targets={k: v[0] for k, v in TARGETS.items()},
        passed={k: (None if generated.get(k) is None else bool(generated[k] >= v[0])) for k, v in TARGETS.items()},
        timings=dict(
            load_seconds=round(load_seconds, 2),
            t2v_seconds_per_video=t2v_seconds / len(t2v_videos),
            i2v_seconds_per_video=(i2v_seconds / len(i2v_videos)) if i2v_videos else None,
        ),
        contact_sheet=dict(path=args.contact_sheet or None, rows=sheet_rows),
        clips=readings,
    )
    if args.out:
        folder = os.path.dirname(os.path.abspath(args.out))
        os.makedirs(folder, exist_ok=True)
        tmp_path = args.out + ".tmp"
        with open(tmp_path, "w") as f:
            json.dump(results, f, indent=1)
        os.replace(tmp_path, args.out)
        log(f"wrote {args.out}")
    return results


def main(argv=None):
    args = parse_args(argv)
    from utils.inference_cli import UsageError

    try:
        results = run(args, log=lambda line: print(line, flush=True))
    except (UsageError, ValueError, FileNotFoundError) as error:
        print(f"eval_moving_mnist: error: {error}", file=sys.stderr)
        return 2
    print_table(results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
