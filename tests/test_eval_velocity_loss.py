"""benchmarks/eval_velocity_loss.py: fixed-noise velocity loss of checkpoints on cached clips."""
import csv
import os
import sys

import numpy as np
import paddle

from models.stdit import STDiT3

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

import eval_velocity_loss  # noqa: E402

TINY = dict(depth=1, hidden_size=48, num_heads=2, patch_size=(1, 2, 2), caption_channels=16,
            model_max_length=6, input_sq_size=8)


def write_features(folder, n=5, frames=3):
    """A feature folder as extract_features writes it: n clips, latent [4, frames, 8, 8], y [6, 16]."""
    os.makedirs(folder)
    rng = np.random.default_rng(0)
    with open(os.path.join(folder, "features.csv"), "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "text", "num_frames", "height", "width", "fps"])
        for i in range(n):
            np.savez(os.path.join(folder, f"{i:06d}.npz"),
                     latent=rng.normal(size=(4, frames, 8, 8)).astype("float32"),
                     y=rng.normal(size=(6, 16)).astype("float32"), y_mask=np.array([1, 1, 1, 1, 0, 0], "int64"))
            w.writerow([f"{i:06d}.npz", f"clip {i}", frames, 32, 32, 8])


def save_model(folder, seed):
    paddle.seed(seed)
    model = STDiT3(**TINY)
    rng = np.random.default_rng(seed)  # non-zero final layer, as after training
    model.set_state_dict({k: paddle.to_tensor(rng.normal(0, 0.05, v.shape).astype("float32"))
                          for k, v in model.state_dict().items()})
    model.save_pretrained(folder)
    return folder


def table_rows(out):
    return [line for line in out.splitlines() if line.startswith("| ") and not line.startswith("| checkpoint")]


def test_same_checkpoint_same_numbers_other_checkpoint_other_numbers(tmp_path, capsys):
    write_features(str(tmp_path / "feats"))
    a = save_model(str(tmp_path / "a"), 1)
    b = save_model(str(tmp_path / "b"), 2)
    argv = ["--feature-path", str(tmp_path / "feats"), "--num-clips", "5", "--timesteps", "300", "900",
            "--batch-size", "2", "--ckpt-path", a, b, a]
    assert eval_velocity_loss.main(argv) == 0
    out = capsys.readouterr().out
    assert "| checkpoint | t=300 | t=300|f0 | t=900 | t=900|f0 |" in out
    rows = [r.split("|")[2:-1] for r in table_rows(out)]
    assert len(rows) == 3 and all(len(r) == 4 for r in rows)
    values = np.array(rows, dtype=float)
    assert np.all(np.isfinite(values)) and np.all(values > 0)
    np.testing.assert_array_equal(values[0], values[2])  # same noise, same clips
    assert np.abs(values[0] - values[1]).max() > 1e-3


def test_batch_size_does_not_change_the_losses(tmp_path):
    from schedulers.rflow import RFlow
    from trainer.features import FeatureDataset, collate_features

    write_features(str(tmp_path / "feats"))
    model = STDiT3.from_pretrained(save_model(str(tmp_path / "a"), 1))
    model.eval()
    data = FeatureDataset(str(tmp_path / "feats"))
    batch = collate_features([data[i] for i in range(5)])
    paddle.seed(0)
    noise = paddle.randn(batch["latent"].shape)
    one = eval_velocity_loss.velocity_losses(model, RFlow(), batch, noise, [500.0], 1)
    all_ = eval_velocity_loss.velocity_losses(model, RFlow(), batch, noise, [500.0], 5)
    assert set(one) == {"500", "500|f0"}
    for k in one:
        np.testing.assert_allclose(one[k], all_[k], rtol=1e-5)
    assert abs(one["500"] - one["500|f0"]) > 1e-4  # frame 0 given clean changes the loss


def test_bad_input_exits_2_with_one_line(tmp_path, capsys):
    write_features(str(tmp_path / "feats"))
    a = save_model(str(tmp_path / "a"), 1)
    assert eval_velocity_loss.main(["--feature-path", str(tmp_path / "feats"), "--num-clips", "9", "--ckpt-path", a]) == 2
    assert "--num-clips 9: accepted 1..5" in capsys.readouterr().err
    assert eval_velocity_loss.main(["--feature-path", str(tmp_path / "feats"), "--num-clips", "5",
                                   "--ckpt-path", str(tmp_path / "nope")]) == 2
    assert "checkpoint folder not found" in capsys.readouterr().err
    assert eval_velocity_loss.main(["--feature-path", str(tmp_path / "none"), "--ckpt-path", a]) == 2
    assert "feature index" in capsys.readouterr().err
