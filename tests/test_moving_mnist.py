"""The moving-MNIST dataset (reproducible files, truthful captions, held-out digits kept apart, CSV
readable by the training dataset) and the VAE training script (normalised latents, smoke run)."""
import csv
import importlib.util
import json
import os

import numpy as np
import pytest

from video_datasets.moving_mnist import (
    AXIS_DIRECTIONS,
    DIAGONAL_DIRECTIONS,
    DIGIT_SIZE,
    HELDOUT_EVERY,
    bounce_trajectory,
    digit_centroid,
    export_digit_images,
    indices_by_label,
    load_digits,
    make_clip,
    render_frames,
    split_indices,
    swap_digit_images,
    write_split,
)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def digits():
    return load_digits()


def _files(folder):
    out = {}
    for base, _, names in os.walk(folder):
        for name in names:
            path = os.path.join(base, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, folder)] = f.read()
    return out


def test_same_seed_writes_identical_files(tmp_path):
    a = write_split(tmp_path / "a", "heldout", 3, seed=5)
    write_split(tmp_path / "b", "heldout", 3, seed=5)
    files_a, files_b = _files(tmp_path / "a"), _files(tmp_path / "b")
    assert sorted(files_a) == ["heldout.csv", "heldout.json"] + [f"heldout/heldout_0000{k}.mp4" for k in range(3)]
    assert files_a == files_b
    # clip k depends on (seed, split, k) only; another seed gives other clips
    write_split(tmp_path / "c", "heldout", 2, seed=5)
    assert _files(tmp_path / "c")["heldout/heldout_00001.mp4"] == files_a["heldout/heldout_00001.mp4"]
    write_split(tmp_path / "d", "heldout", 3, seed=6)
    assert _files(tmp_path / "d")["heldout.csv"] != files_a["heldout.csv"]
    assert not [n for n in os.listdir(tmp_path / "a") if n.startswith(".")]  # no temporary left
    assert a["num_clips"] == 3


@pytest.mark.parametrize("directions", [4, 8])
def test_captions_match_the_rendered_motion(digits, directions):
    images, labels = digits
    pools = indices_by_label(labels, split_indices(len(labels), "train"))
    table = {**AXIS_DIRECTIONS, **DIAGONAL_DIRECTIONS}
    for k in range(100):
        frames, text, clip = make_clip(images, pools, 0, "train", k, directions=directions)
        assert frames.shape == (16, 64, 64, 3) and frames.dtype == np.uint8
        assert (frames[..., 0] == frames[..., 1]).all() and (frames[..., 0] == frames[..., 2]).all()
        assert text == " and ".join(f"the digit {d['label']} moves {d['direction']}" for d in clip)
        for d in clip:
            assert labels[d["mnist_index"]] == d["label"]
            assert d["mnist_index"] % HELDOUT_EVERY != 0
            alone = render_frames(images, [d], 16, 64)[..., 0]  # [T, H, W]
            centroids = np.array([digit_centroid(f) for f in alone])  # [T, 2] (x, y)
            np.testing.assert_allclose(centroids, d["centroids"], atol=1e-6)
            sign = np.array(table[d["direction"]])
            steps = np.diff(centroids[:9], axis=0)  # the first min_run = 8 steps follow the caption
            assert (np.sign(np.round(steps, 6)) == sign).all(), (text, d["direction"], steps)
            net = centroids[-1] - centroids[0]  # ... and so does the whole clip's displacement
            assert (np.sign(np.round(net, 6)) == sign).all(), (text, net)
            assert (np.round(np.abs(steps[steps != 0]), 6) >= 2).all()  # >= 2 px per frame: visible motion


def test_clip_in_the_mp4_moves_as_captioned(tmp_path, digits):
    write_split(tmp_path, "heldout", 4, seed=1, digits_per_clip="1")
    from utils.video_io import read_frames

    images = digits[0]
    meta = json.load(open(tmp_path / "heldout.json"))
    for record in meta["clips"]:
        d = record["digits"][0]
        decoded = read_frames(tmp_path / record["path"])[..., 0]
        rendered = render_frames(images, [{"mnist_index": d["mnist_index"], "positions": d["positions"]}], 16, 64)

        def centroids(frames):
            return np.array([digit_centroid(np.where(f > 40, f, 0)) for f in frames])  # no codec ringing

        measured = centroids(decoded)
        np.testing.assert_allclose(measured, centroids(rendered[..., 0]), atol=0.3)
        np.testing.assert_allclose(measured, d["centroids"], atol=1.0)
        sign = np.array({**AXIS_DIRECTIONS, **DIAGONAL_DIRECTIONS}[d["direction"]])
        assert (np.sign(np.round(measured[8] - measured[0])) == sign).all()


def test_bounce_reflects_at_the_walls():
    positions = bounce_trajectory((30, 0), (3, 0), 6, 36)
    assert positions[:, 0].tolist() == [30, 33, 36, 33, 30, 27]
    positions = bounce_trajectory((1, 5), (-2, 2), 3, 36)
    assert positions.tolist() == [[1, 5], [1, 7], [3, 9]]


def test_heldout_digits_never_reach_the_training_split(tmp_path, digits):
    _, labels = digits
    train, heldout = split_indices(len(labels), "train"), split_indices(len(labels), "heldout")
    assert not set(train) & set(heldout)
    assert len(train) + len(heldout) == len(labels) == 5000
    assert (heldout % HELDOUT_EVERY == 0).all() and np.bincount(labels[heldout]).tolist() == [50] * 10
    for split in ("train", "heldout"):
        write_split(tmp_path, split, 30, seed=2)
        meta = json.load(open(tmp_path / f"{split}.json"))
        used = {d["mnist_index"] for clip in meta["clips"] for d in clip["digits"]}
        assert used <= set(heldout if split == "heldout" else train)
        first = meta["clips"][0]["digits"][0]
        assert len(first["positions"]) == len(first["centroids"]) == 16


def test_csv_reads_into_the_training_dataset(tmp_path):
    from video_datasets import VideoTextDataset

    result = write_split(tmp_path, "train", 2, seed=3, num_frames=8, size=48, fps=6)
    rows = list(csv.DictReader(open(result["csv"])))
    assert list(rows[0]) == ["path", "text", "num_frames", "height", "width", "fps"]
    assert rows[0]["num_frames"] == "8" and rows[0]["height"] == rows[0]["width"] == "48" and rows[0]["fps"] == "6"
    dataset = VideoTextDataset(result["csv"], num_frames=8, image_size=(48, 48))
    sample = dataset[1]
    assert sample["video"].shape == (3, 8, 48, 48)
    assert sample["text"] == rows[1]["text"] and sample["text"].startswith("the digit ")
    assert sample["fps"] == 6.0 and dataset.skipped == 0


def test_bad_arguments_fail_clearly(tmp_path):
    with pytest.raises(ValueError, match="split must be one of"):
        write_split(tmp_path, "test", 1)
    with pytest.raises(ValueError, match="room"):
        write_split(tmp_path, "train", 1, size=40, speeds=(3, 3))
    with pytest.raises(ValueError, match="digits_per_clip"):
        write_split(tmp_path, "train", 1, digits_per_clip="3")
    assert not os.listdir(tmp_path)


def test_swapped_pairs_trade_the_digits_between_the_same_trajectories(tmp_path, digits):
    images, labels = digits
    pools = indices_by_label(labels, split_indices(len(labels), "train"))
    pair = [make_clip(images, pools, 3, "train", k, digits_per_clip="2", swapped_pairs=True) for k in (4, 5)]
    (frames_a, text_a, a), (frames_b, text_b, b) = pair
    # the same images, each on the other one's path; the caption keeps its digit order
    assert [d["mnist_index"] for d in b] == [d["mnist_index"] for d in a]
    for k in (0, 1):
        np.testing.assert_array_equal(b[k]["positions"], a[1 - k]["positions"])
        assert b[k]["direction"] == a[1 - k]["direction"] and b[k]["velocity"] == a[1 - k]["velocity"]
        np.testing.assert_allclose(b[k]["centroids"][0],
                                   b[k]["positions"][0] + np.array(digit_centroid(images[b[k]["mnist_index"]])))
    assert text_b == f"the digit {a[0]['label']} moves {a[1]['direction']} and the digit {a[1]['label']} moves {a[0]['direction']}"
    np.testing.assert_array_equal(frames_b, render_frames(images, b, 16, 64))
    assert text_a == make_clip(images, pools, 3, "train", 2, digits_per_clip="2")[1]  # pair k: the draw of clip k
    # the files: consecutive pairs, recorded in the JSON
    write_split(tmp_path, "train", 6, seed=3, digits_per_clip="2", swapped_pairs=True)
    meta = json.load(open(tmp_path / "train.json"))
    assert meta["swapped_pairs"] is True
    clips = meta["clips"]
    for first, second in zip(clips[0::2], clips[1::2]):
        assert [d["positions"] for d in second["digits"]] == [d["positions"] for d in first["digits"][::-1]]
        assert [d["label"] for d in second["digits"]] == [d["label"] for d in first["digits"]]
    assert clips[4]["text"] == text_a and clips[5]["text"] == text_b  # pair 2 = clips 4, 5
    with pytest.raises(ValueError, match="only two-digit clips"):
        swap_digit_images(a[:1], images)
    with pytest.raises(ValueError, match="swapped_pairs needs digits_per_clip '2' and an even num_clips"):
        write_split(tmp_path / "odd", "train", 3, digits_per_clip="2", swapped_pairs=True)
    with pytest.raises(ValueError, match="swapped_pairs needs digits_per_clip '2'"):
        write_split(tmp_path / "mixed", "train", 4, swapped_pairs=True)
    assert not os.path.exists(tmp_path / "odd") or not os.listdir(tmp_path / "odd")


def test_digit_images_come_from_heldout_digits(tmp_path, digits):
    images, labels = digits
    written = export_digit_images(tmp_path, [1500], position=(3, 18), suffix="_left")
    assert [(os.path.basename(p), i, label) for p, i, label in written] == [("digit_3_left.png", 1500, 3)]
    from utils.video_io import read_frames

    image = read_frames(written[0][0])[0]
    assert image.shape == (64, 64, 3)
    np.testing.assert_array_equal(image[18:18 + DIGIT_SIZE, 3:3 + DIGIT_SIZE, 0], images[1500])
    with pytest.raises(ValueError, match="training digit"):
        export_digit_images(tmp_path, [1501])


# --------------------------------------------------------------------------------------------- VAE


def test_normalize_latents_keeps_reconstructions():
    import paddle

    from trainer.vae_trainer import VAEArguments, build_autoencoder, latent_statistics, normalize_latents, reconstruct

    paddle.seed(0)
    vae = build_autoencoder(VAEArguments(block_out_channels=[8, 16], norm_num_groups=4, sample_size=16,
                                         data_path=["unused.csv"]))
    vae.eval()
    frames = np.random.default_rng(0).integers(0, 256, (6, 16, 16, 3), dtype=np.uint8)
    with paddle.no_grad():
        x = paddle.to_tensor(frames.transpose(0, 3, 1, 2).astype(np.float32) / 127.5 - 1)
        before = vae.decode(vae.encode(x).latent_dist.mode()).sample.numpy()
        mean, std = latent_statistics(vae, frames)
        normalize_latents(vae, mean, std)
        after = vae.decode(vae.encode(x).latent_dist.mode()).sample.numpy()
    np.testing.assert_allclose(after, before, atol=1e-4)
    new_mean, new_std = latent_statistics(vae, frames)
    np.testing.assert_allclose(new_mean, 0, atol=1e-4)
    assert new_std == pytest.approx(1 / 0.18215, rel=1e-4)
    assert reconstruct(vae, frames).shape == frames.shape


def test_train_vae_smoke_run_loads_into_the_video_vae(tmp_path):
    import paddle

    from models.vae import VideoAutoencoderKL
    from utils.video_io import save_video

    data = write_split(tmp_path / "data", "train", 2, seed=0, num_frames=4, size=32, speeds=(1, 1))
    real = save_video(np.random.default_rng(0).integers(0, 256, (3, 40, 48, 3), dtype=np.uint8),
                      tmp_path / "real.mp4", fps=4)
    spec = importlib.util.spec_from_file_location("train_vae", os.path.join(ROOT, "scripts", "train_vae.py"))
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    out = tmp_path / "run"
    code = script.main([
        os.path.join(ROOT, "configs", "vae", "mnist_vae.json"),
        "--output_dir", str(out), "--block_out_channels", "8", "16", "--norm_num_groups", "4",
        "--sample_size", "32", "--data_path", data["csv"], "--eval_data_path", data["csv"],
        "--real_videos", real, "--real_short_side", "40", "--eval_real_videos", real,
        "--max_steps", "2", "--per_device_train_batch_size", "2", "--logging_steps", "1", "--save_steps", "2",
        "--warmup_steps", "0", "--report_to", "none",
    ])
    assert code == 0
    report = json.load(open(out / "vae_eval.json"))
    assert {"heldout_clips_psnr_db", "real_psnr_db", "encode_decode_16_frames_s"} <= set(report)
    vae = VideoAutoencoderKL.from_pretrained(out / "vae")
    assert vae.spatial_factor == 2 and vae.out_channels == 4
    z = vae.encode(paddle.zeros([1, 3, 2, 32, 32]), seed=0)
    assert z.shape == [1, 4, 2, 16, 16]
    assert vae.decode(z).shape == [1, 3, 2, 32, 32]
