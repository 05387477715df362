"""Averaging DiT weights (models/stdit/weight_average.py, scripts/average_dit_weights.py)."""
import os
import subprocess
import sys

import numpy as np
import paddle
import pytest

from models.stdit import STDiT3
from models.stdit.weight_average import average_models, average_states, mixing_weights

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = dict(depth=2, hidden_size=48, num_heads=2, caption_channels=16, model_max_length=6, input_sq_size=64,
            patch_size=(1, 2, 2))


def _random_model(seed, **overrides):
    paddle.seed(seed)
    model = STDiT3(**dict(TINY, **overrides))
    rng = np.random.default_rng(seed)
    model.set_state_dict({k: paddle.to_tensor(rng.normal(0, 0.05, v.shape).astype("float32"))
                          for k, v in model.state_dict().items()})
    return model


def test_mixing_weights_default_equal_and_validated():
    assert mixing_weights(None, 4) == [0.25] * 4
    assert mixing_weights([0.3, 0.7], 2) == [0.3, 0.7]
    with pytest.raises(ValueError, match="at least 2 models, got 1"):
        mixing_weights(None, 1)
    with pytest.raises(ValueError, match="got 3 weights for 2 models"):
        mixing_weights([0.2, 0.3, 0.5], 2)
    with pytest.raises(ValueError, match=r"sum to 1, got \[0.5, 0.6\]"):
        mixing_weights([0.5, 0.6], 2)
    with pytest.raises(ValueError, match="sum to 1"):
        mixing_weights([-0.5, 1.5], 2)


def test_average_states_values_dtype_and_mismatches():
    a = {"w": np.array([1.0, 2.0], dtype=np.float16), "b": np.zeros((2, 2), np.float32)}
    b = {"w": np.array([3.0, 6.0], dtype=np.float32), "b": np.ones((2, 2), np.float32)}
    out = average_states([a, b], [0.25, 0.75])
    np.testing.assert_allclose(out["w"], [2.5, 5.0])
    np.testing.assert_allclose(out["b"], np.full((2, 2), 0.75))
    assert out["w"].dtype == np.float32
    with pytest.raises(ValueError, match=r"weight b: model 0 has shape \[2, 2\], model 1 \[4\]"):
        average_states([a, dict(b, b=np.ones(4, np.float32))])
    with pytest.raises(ValueError, match="model 1 has other weights"):
        average_states([a, {"w": b["w"]}])


def test_average_models_is_the_mean_of_weights_and_rejects_other_configs():
    m0, m1 = _random_model(0), _random_model(1)
    avg = average_models([m0, m1])
    s0, s1, sa = m0.state_dict(), m1.state_dict(), avg.state_dict()
    for key in s0:
        np.testing.assert_allclose(sa[key].numpy(), (s0[key].numpy() + s1[key].numpy()) / 2, atol=1e-7)
    one = average_models([m0, m1], [1.0, 0.0])
    x = paddle.randn([1, 4, 2, 8, 8])
    y = paddle.randn([1, 1, 6, 16])
    t = paddle.to_tensor([500.0])
    m0.eval()
    with paddle.no_grad():
        np.testing.assert_allclose(one(x, t, y, num_frames=2, height=32, width=32, ar=1.0, fps=8).numpy(),
                                   m0(x, t, y, num_frames=2, height=32, width=32, ar=1.0, fps=8).numpy(), atol=1e-6)
    with pytest.raises(ValueError, match=r"another config than model 0 \(differs in \['hidden_size'"):
        average_models([m0, _random_model(2, hidden_size=32)])


def test_average_script_writes_a_loadable_folder_and_stops_on_bad_input(tmp_path):
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    _random_model(0).save_pretrained(a)
    _random_model(1).save_pretrained(b)
    run = lambda *args: subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "average_dit_weights.py"),  # noqa: E731
                                        "--model", "STDiT3", *args], capture_output=True, text=True, cwd=ROOT)
    done = run("--inputs", a, b, "--weights", "0.25", "0.75", "--output", str(tmp_path / "avg"))
    assert done.returncode == 0, done.stderr
    assert "averaged 2 STDiT3 models (0.25 x" in done.stdout
    avg = STDiT3.from_pretrained(str(tmp_path / "avg")).state_dict()
    wa, wb = STDiT3.from_pretrained(a).state_dict(), STDiT3.from_pretrained(b).state_dict()
    key = "x_embedder.proj.weight"
    np.testing.assert_allclose(avg[key].numpy(), 0.25 * wa[key].numpy() + 0.75 * wb[key].numpy(), atol=1e-7)
    same = run("--inputs", a, b, "--output", a)
    assert same.returncode != 0 and "is one of the inputs" in same.stderr
    bad = run("--inputs", a, b, "--weights", "0.5", "0.6", "--output", str(tmp_path / "x"))
    assert bad.returncode != 0 and "sum to 1" in bad.stderr and not os.path.exists(tmp_path / "x")
    missing = run("--inputs", a, str(tmp_path / "nope"), "--output", str(tmp_path / "y"))
    assert missing.returncode != 0 and "model folder not found" in missing.stderr and not os.path.exists(tmp_path / "y")
