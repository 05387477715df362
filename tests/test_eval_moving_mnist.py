"""The Moving-MNIST quality metrics (`utils.digit_eval`) and `benchmarks/eval_moving_mnist.py`.

A perfect "generator" (the held-out clips themselves, rendered from real MNIST digits with known
motion) must score ~100%; static, reversed, shuffled or wrongly captioned clips must not. The
metric tests read digits with a nearest-template classifier over the held-out digits (exact on
these clips, so they test segmentation, tracking, voting and motion alone); the CNN is tested
on its own and once on the same clips.
"""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from utils import digit_eval as de
from video_datasets import moving_mnist as mm

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
T, SIZE = 16, 64


class NearestTemplate:
    """Reads a crop as the label of the nearest held-out digit's crop (squared distance)."""

    def __init__(self, images, labels, indices):
        self.templates = np.stack([de.digit_crop(images[i]) for i in indices])  # [M, 28, 28]
        self.labels = np.asarray(labels)[indices]

    def predict_proba(self, crops):
        d = ((np.asarray(crops)[:, None] - self.templates[None]) ** 2).sum(axis=(2, 3))  # [N, M]
        return np.eye(10, dtype=np.float32)[self.labels[d.argmin(axis=1)]]


@pytest.fixture(scope="module")
def mnist():
    images, labels = mm.load_digits()
    heldout = mm.split_indices(len(labels), "heldout")
    return images, labels, mm.indices_by_label(labels, heldout), heldout


@pytest.fixture(scope="module")
def oracle(mnist):
    images, labels, _, heldout = mnist
    return NearestTemplate(images, labels, heldout)


def clips(mnist, count, digits_per_clip="mixed", **kwargs):
    images, _, pools, _ = mnist
    return [mm.make_clip(images, pools, 0, "heldout", k, num_frames=T, size=SIZE, digits_per_clip=digits_per_clip, **kwargs)
            for k in range(count)]


def summary(scores):
    return de.summarize(scores)


# ------------------------------------------------------------------------------------------ captions


@pytest.mark.parametrize("digits", [
    [(3, "right")],
    [(3, "right"), (8, "down")],
    [(0, "up and left"), (0, "down and right")],
    [(7, "left"), (1, "up and right")],
])
def test_parse_caption_inverts_the_dataset_captions(digits):
    text = mm.caption([{"label": d, "direction": n} for d, n in digits])
    assert de.parse_caption(text) == digits


@pytest.mark.parametrize("text", [
    "", "a cat", "the digit 3 moves sideways", "the digit 3 moves right and", "the digit 12 moves up",
    "the digit 3 moves right, the digit 4 moves up", "the digit 3 moves right quickly", None,
])
def test_parse_caption_rejects_other_text(text):
    with pytest.raises(ValueError):
        de.parse_caption(text)


# --------------------------------------------------------------------------- perfect and bad generators


def test_real_clips_score_perfectly(mnist, oracle):
    data = clips(mnist, 40)
    scores = [de.score_video(frames, text, oracle) for frames, text, _ in data]
    s = summary(scores)
    assert s["digit_accuracy"] == 1.0 and s["motion_accuracy"] == 1.0, [x for x in scores if not x["motion_correct"]]
    assert any(len(d) == 2 for _, _, d in data) and any(len(d) == 1 for _, _, d in data)


def test_measured_velocity_is_the_true_velocity(mnist, oracle):
    for frames, text, digits in clips(mnist, 10, digits_per_clip="1"):
        score = de.score_video(frames, text, oracle)
        assert np.allclose(score["velocities"][0], digits[0]["velocity"], atol=0.05)


def test_crossing_digits_keep_their_identity(mnist, oracle):
    """Two digits pass through each other head-on; tracking must not swap them."""
    images, labels, pools, _ = mnist
    a, b = int(pools[6][0]), int(pools[3][0])
    down = mm.bounce_trajectory((18, 0), (0, 3), T, SIZE - 28)
    up = mm.bounce_trajectory((20, 36), (0, -3), T, SIZE - 28)
    frames = mm.render_frames(images, [dict(mnist_index=a, positions=down), dict(mnist_index=b, positions=up)], T, SIZE)
    score = de.score_video(frames, "the digit 6 moves down and the digit 3 moves up", oracle)
    assert score["digit_correct"] and score["motion_correct"], score
    swapped = de.score_video(frames, "the digit 6 moves up and the digit 3 moves down", oracle)
    assert swapped["digit_correct"] and swapped["motion_hits"] == 0


def test_static_reversed_and_shuffled_clips_score_low_on_motion(mnist, oracle):
    data = clips(mnist, 20, speeds=(1, 2), min_run=T - 1)  # no bounce within the clip
    static = [de.score_video(np.repeat(f[:1], T, axis=0), text, oracle) for f, text, _ in data]
    assert summary(static)["motion_accuracy"] == 0.0 and summary(static)["digit_accuracy"] == 1.0
    assert all(d == "static" for s in static for d in s["found_directions"])
    reversed_ = [de.score_video(f[::-1], text, oracle) for f, text, _ in data]
    assert summary(reversed_)["motion_accuracy_per_digit"] == 0.0
    rng = np.random.default_rng(0)
    shuffled = [de.score_video(f[rng.permutation(T)], text, oracle) for f, text, _ in data]
    assert summary(shuffled)["motion_accuracy"] <= 0.5
    assert summary([de.score_video(f, text, oracle) for f, text, _ in data])["motion_accuracy"] == 1.0


def test_wrong_captions_score_low(mnist, oracle):
    wrong_digit, wrong_way = [], []
    turn = {"left": "up", "up": "right", "right": "down", "down": "left"}
    for frames, _, digits in clips(mnist, 20):
        other = [dict(d, label=(d["label"] + 1) % 10) for d in digits]
        wrong_digit.append(de.score_video(frames, mm.caption(other), oracle))
        turned = [dict(d, direction=turn[d["direction"]]) for d in digits]
        wrong_way.append(de.score_video(frames, mm.caption(turned), oracle))
    assert summary(wrong_digit)["digit_accuracy"] == 0.0
    assert summary(wrong_way)["motion_accuracy"] == 0.0
    # two equal digits: the caption does not say which is which, so one turned direction may fit the other
    assert all(s["motion_hits"] == 0 for s in wrong_way if len(set(s["expected_digits"])) == len(s["expected_digits"]))


def test_summary_splits_clips_by_digit_count(mnist, oracle):
    """Right captions on the one-digit clips, a wrong digit on the two-digit ones: the split shows it."""
    scores = []
    for frames, text, digits in clips(mnist, 20):
        if len(digits) == 2:
            text = mm.caption([dict(d, label=(d["label"] + 1) % 10) for d in digits])
        scores.append(de.score_video(frames, text, oracle))
    s = summary(scores)
    n1 = sum(len(x["expected_digits"]) == 1 for x in scores)
    assert 0 < n1 < 20 and s["num_videos_one_digit"] == n1 and s["num_videos_two_digit"] == 20 - n1
    assert s["digit_accuracy_one_digit"] == 1.0 and s["digit_accuracy_two_digit"] == 0.0
    assert s["motion_accuracy_one_digit"] == 1.0 and s["digit_accuracy"] == n1 / 20
    only_one = summary([x for x in scores if len(x["expected_digits"]) == 1])
    assert "digit_accuracy_two_digit" not in only_one and only_one["digit_accuracy_one_digit"] == 1.0


def test_blank_and_one_digit_videos(mnist, oracle):
    blank = np.zeros((T, SIZE, SIZE, 3), np.uint8)
    score = de.score_video(blank, "the digit 3 moves right", oracle)
    assert score["found_digits"] == [] and not score["digit_correct"] and score["found_directions"] == ["missing"]
    assert score["frames_with_digits"] == 0
    (frames, text, digits), = [c for c in clips(mnist, 10, digits_per_clip="1")][:1]
    two = f"{text} and the digit {(digits[0]['label'] + 1) % 10} moves up"
    score = de.score_video(frames, two, oracle)  # the generator drew one digit of two
    assert not score["digit_correct"] and score["digit_hits"] <= 1


def test_conditioning_scores(mnist, oracle):
    data = clips(mnist, 10, digits_per_clip="1")
    scores = [de.score_conditioning(f, f[0], text, oracle) for f, text, _ in data]
    assert all(s["psnr_frame0"] == float("inf") and s["last_frame_correct"] for s in scores)
    s = de.summarize([], scores)
    assert s["psnr_frame0_db"] == de.PSNR_CAP and s["last_frame_digit_accuracy"] == 1.0
    frames, text, _ = data[0]
    rng = np.random.default_rng(1)
    noisy = np.clip(frames[0].astype(int) + rng.integers(-3, 4, frames[0].shape), 0, 255).astype(np.uint8)
    assert 38 < de.psnr(noisy, frames[0]) < 50
    assert de.psnr(frames[T - 1], frames[0]) < 20
    assert not de.score_conditioning(np.zeros_like(frames), frames[0], text, oracle)["last_frame_correct"]


def test_direction_of():
    assert de.direction_of(None) == "missing"
    assert de.direction_of([0.3, -0.2]) == "static"
    assert de.direction_of([2.0, 0.9]) == "right" and de.direction_of([-0.2, -1.5]) == "up"
    assert de.direction_of([1.5, 1.4], directions=8) == "down and right"
    assert de.direction_of([1.5, 1.4], directions=4) in ("right", "down")


def test_segment_frame_splits_touching_digits(mnist):
    images, _, pools, _ = mnist
    a, b = int(pools[1][0]), int(pools[7][0])
    placed = [dict(mnist_index=a, positions=np.array([[10, 18]])), dict(mnist_index=b, positions=np.array([[22, 18]]))]
    grey = de.to_grey(mm.render_frames(images, placed, 1, SIZE))[0]
    segments = de.segment_frame(grey, 2)
    assert len(segments) == 2
    assert de.segment_frame(grey, 1)[0]["mask"].sum() == (grey >= de.THRESHOLD).sum()
    assert de.segment_frame(np.zeros((SIZE, SIZE)), 2) == []


BAD_CALLS = [
    (lambda o: de.score_video(np.zeros((T, SIZE, SIZE, 3), np.float32), "the digit 1 moves up", o), "uint8"),
    (lambda o: de.score_video(np.zeros((1, SIZE, SIZE, 3), np.uint8), "the digit 1 moves up", o), "2 frames"),
    (lambda o: de.score_video(np.zeros((T, SIZE, SIZE), np.uint8), "the digit 1 moves up", o), "uint8"),
    (lambda o: de.score_video(np.zeros((T, SIZE, SIZE, 3), np.uint8), "a digit", o), "caption"),
    (lambda o: de.score_video(np.zeros((T, SIZE, SIZE, 3), np.uint8), "the digit 1 moves up and left", o), "vocabulary"),
    (lambda o: de.score_video(np.zeros((T, SIZE, SIZE, 3), np.uint8), "the digit 1 moves up", o, motion_frames=T), "motion_frames"),
    (lambda o: de.psnr(np.zeros((4, 4, 3), np.uint8), np.zeros((4, 5, 3), np.uint8)), "psnr"),
    (lambda o: de.psnr(np.zeros((4, 4, 3)), np.zeros((4, 4, 3))), "psnr"),
    (lambda o: de.segment_frame(np.zeros((8, 8)), 0), "num_digits"),
    (lambda o: de.normalize_digit(np.zeros((8, 8)), np.zeros((8, 8), bool)), "mask"),
    (lambda o: de.DigitClassifier().predict_proba(np.zeros((2, 20, 20))), "28"),
]


@pytest.mark.parametrize("call,message", BAD_CALLS)
def test_bad_inputs_raise(call, message, oracle):
    with pytest.raises(ValueError, match=message):
        call(oracle)


# ---------------------------------------------------------------------------------------- classifier


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    cache = str(tmp_path_factory.mktemp("clf") / "digits.pdparams")
    model, info = de.load_or_train_classifier(cache, epochs=20)
    return cache, model, info


def test_classifier_is_trained_on_held_out_digits_only(mnist):
    _, labels, _, heldout = mnist
    train, validation = de.classifier_split(labels)
    assert len(train) == 400 and len(validation) == 100
    assert set(train) | set(validation) == set(heldout) and not set(train) & set(validation)
    assert all(mm.is_heldout(i) for i in train)
    assert np.bincount(labels[validation], minlength=10).min() == 10


def test_classifier_accuracy_and_cache(trained, mnist):
    cache, model, info = trained
    assert not info["loaded"] and info["num_train"] == 400
    assert info["validation_accuracy"] >= 0.85 and info["unseen_train_split_accuracy"] >= 0.88, info
    again, info2 = de.load_or_train_classifier(cache, epochs=20)
    assert info2["loaded"] and info2["validation_accuracy"] == info["validation_accuracy"]
    crops = np.random.default_rng(0).uniform(size=(5, 28, 28)).astype(np.float32)
    np.testing.assert_allclose(again.predict_proba(crops), model.predict_proba(crops), atol=1e-6)
    with pytest.raises(ValueError, match="trained with"):
        de.load_or_train_classifier(cache, epochs=3)


def test_cnn_reads_real_and_degraded_clips(trained, mnist):
    """Real clips, and the same blurred, dimmed and noisy (as a generator might draw them)."""
    from scipy import ndimage

    _, model, _ = trained
    data = clips(mnist, 30)
    s = summary([de.score_video(f, text, model) for f, text, _ in data])
    assert s["digit_accuracy"] >= 0.85 and s["motion_accuracy"] >= 0.95, s
    rng = np.random.default_rng(0)
    degraded = []
    for frames, text, _ in data:
        grey = ndimage.gaussian_filter(frames[..., 0].astype(np.float32), (0, 0.7, 0.7)) * 0.9
        grey = np.clip(np.round(grey + rng.normal(0, 6, grey.shape)), 0, 255).astype(np.uint8)
        degraded.append(de.score_video(np.repeat(grey[..., None], 3, axis=-1), text, model))
    s = summary(degraded)
    assert s["digit_accuracy"] >= 0.8 and s["motion_accuracy"] >= 0.9, s


# ---------------------------------------------------------------------------------------- the script


def run_script(*args, cwd=ROOT):
    return subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "eval_moving_mnist.py"), *args],
                          capture_output=True, text=True, cwd=cwd)


def load_script():
    import importlib.util

    spec = importlib.util.spec_from_file_location("eval_moving_mnist", os.path.join(ROOT, "benchmarks", "eval_moving_mnist.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_script_prompts_are_the_written_heldout_set(tmp_path):
    """The benchmark's clips are those `scripts/make_moving_mnist.py --split heldout` writes."""
    written = mm.write_split(str(tmp_path), "heldout", 4, seed=5)
    with open(written["json"]) as f:
        records = json.load(f)["clips"]
    ours = load_script().heldout_clips(4, 5, T, SIZE, "mixed", 4)
    assert [text for _, text in ours] == [r["text"] for r in records]


@pytest.mark.parametrize("flags,message", [
    (["--num-videos", "0"], "--num-videos"),
    (["--num-conditioned", "-1"], "--num-conditioned"),
    (["--threshold", "1.5"], "--threshold"),
])
def test_script_rejects_bad_flags(flags, message):
    res = run_script(*flags)
    assert res.returncode == 2 and message in res.stderr


def test_script_end_to_end_on_tiny_components(tmp_path, tiny_inference_config):
    """Fixture VAE / T5 and a tiny random STDiT3: the numbers are meaningless, the outputs are checked."""
    res = run_script("--config", tiny_inference_config, "--num-videos", "2", "--num-conditioned", "1",
                     "--batch-size", "2", "--classifier-epochs", "1", "--classifier-cache", str(tmp_path / "c.pdparams"),
                     "--out", str(tmp_path / "r.json"), "--contact-sheet", str(tmp_path / "sheet.png"),
                     "--save-videos", str(tmp_path / "videos"))
    assert res.returncode == 0, res.stderr[-3000:]
    assert "| digit accuracy (t2v clips) |" in res.stdout and "seconds per video (i2v)" in res.stdout
    r = json.loads((tmp_path / "r.json").read_text())
    assert r["generated"]["num_videos"] == 2 and r["generated"]["num_conditioned"] == 1
    assert 0.0 <= r["real_clips"]["motion_accuracy"] <= 1.0 and r["settings"]["num_sampling_steps"] == 2
    assert set(r["passed"]) == {"digit_accuracy", "motion_accuracy", "psnr_frame0_db", "last_frame_digit_accuracy"}
    assert len(r["clips"]["t2v"]) == 2 and "psnr_frame0" in r["clips"]["i2v"][0]
    assert len(r["contact_sheet"]["rows"]) == 3
    from utils.video_io import read_frames

    sheet = read_frames(str(tmp_path / "sheet.png"))[0]
    assert sheet.shape == (3 * 64 + 4 * 2, 16 * 64 + 17 * 2, 3)
    assert sorted(os.listdir(tmp_path / "videos")) == ["i2v_000.mp4", "i2v_000_reference.png", "t2v_000.mp4", "t2v_001.mp4"]
    res = run_script("--config", tiny_inference_config, "--num-videos", "1", "--num-conditioned", "0",
                     "--classifier-epochs", "2", "--classifier-cache", str(tmp_path / "c.pdparams"), "--out", "",
                     "--contact-sheet", "")
    assert res.returncode == 2 and "trained with" in res.stderr
