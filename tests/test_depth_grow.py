"""Growing a trained STDiT to more blocks (models/stdit/depth_grow.py, scripts/grow_dit_depth.py)."""
import os
import subprocess
import sys

import numpy as np
import paddle
import pytest

from models.stdit import STDiT2, STDiT3
from models.stdit.depth_grow import grow_depth, trained_positions

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = dict(hidden_size=48, num_heads=2, caption_channels=16, model_max_length=6, input_sq_size=64,
            patch_size=(1, 2, 2))


def _trained_like(cls, depth):
    """A tiny model whose zero-initialised layers get random values (as after training)."""
    paddle.seed(3)
    model = cls(depth=depth, **TINY)
    rng = np.random.default_rng(0)
    model.set_state_dict({k: paddle.to_tensor(rng.normal(0, 0.05, v.shape).astype("float32"))
                          for k, v in model.state_dict().items()})
    model.eval()
    return model


def _inputs():
    paddle.seed(4)
    x = paddle.randn([2, 4, 3, 8, 8])
    y = paddle.randn([2, 1, 6, 16])
    t = paddle.to_tensor([100.0, 900.0])
    x_mask = paddle.to_tensor([[False, True, True], [True, True, True]])
    return x, t, y, x_mask


def test_trained_blocks_are_spread_evenly():
    assert trained_positions(4, 8) == [0, 2, 4, 6]
    assert trained_positions(4, 6) == [0, 2, 3, 4]
    assert trained_positions(2, 2) == [0, 1]
    with pytest.raises(ValueError, match="at least the model's depth 4"):
        trained_positions(4, 3)


@pytest.mark.parametrize("cls", [STDiT3, STDiT2])
def test_grown_model_computes_the_same_output(cls):
    old = _trained_like(cls, 2)
    new = grow_depth(old, 4)
    assert new.depth == 4 and new.config["depth"] == 4 and type(new) is cls
    x, t, y, x_mask = _inputs()
    with paddle.no_grad():
        ref = old(x, t, y, x_mask=x_mask, num_frames=3, height=32, width=32, ar=1.0, fps=8)
        out = new(x, t, y, x_mask=x_mask, num_frames=3, height=32, width=32, ar=1.0, fps=8)
    np.testing.assert_allclose(out.numpy(), ref.numpy(), atol=1e-5)


def test_new_blocks_have_zero_outputs_and_fresh_inputs_the_rest_is_copied():
    old = _trained_like(STDiT3, 2)
    new = grow_depth(old, 4)
    a, b = old.state_dict(), new.state_dict()
    for key, value in b.items():
        head, _, rest = key.partition(".")
        if head in ("spatial_blocks", "temporal_blocks"):
            j, _, sub = rest.partition(".")
            if int(j) in (0, 2):  # trained blocks 0, 1
                np.testing.assert_array_equal(value.numpy(), a[f"{head}.{int(j) // 2}.{sub}"].numpy())
            elif sub.endswith(("proj.weight", "proj.bias", "fc2.weight", "fc2.bias")):
                assert float(value.abs().max()) == 0.0, key
            elif sub.endswith("qkv.weight"):
                assert float(value.abs().max()) > 0.0, key  # trainable start, not all zero
        else:
            np.testing.assert_array_equal(value.numpy(), a[key].numpy())


def test_gradients_reach_the_zeroed_projections():
    new = grow_depth(_trained_like(STDiT3, 1), 2)
    new.train()
    x, t, y, _ = _inputs()
    new(x, t, y, height=32, width=32, fps=8).square().mean().backward()
    for name in ("spatial_blocks.1.attn.proj.weight", "temporal_blocks.1.mlp.fc2.weight"):
        grad = dict(new.named_parameters())[name].grad
        assert grad is not None and float(grad.abs().max()) > 0.0, name


def test_cli_writes_a_loadable_folder_and_rejects_a_smaller_depth(tmp_path):
    src = _trained_like(STDiT3, 2).save_pretrained(str(tmp_path / "src"))
    script = os.path.join(ROOT, "scripts", "grow_dit_depth.py")
    run = lambda *a: subprocess.run([sys.executable, script, "--model", "STDiT3", "--input", src, *a],
                                    capture_output=True, text=True, cwd=ROOT)
    ok = run("--depth", "3", "--output", str(tmp_path / "d3"))
    assert ok.returncode == 0, ok.stderr
    assert "trained blocks at [0, 2]" in ok.stdout
    assert STDiT3.from_pretrained(str(tmp_path / "d3")).depth == 3
    bad = run("--depth", "1", "--output", str(tmp_path / "d1"))
    assert bad.returncode != 0
    assert bad.stderr.strip().splitlines()[-1].startswith("error:") and "new depth 1" in bad.stderr
    assert not (tmp_path / "d1").exists()


# ------------------------------------------------------------------- half-precision storage


def test_float16_storage_halves_the_file_and_loads_back_to_float32(tmp_path):
    model = _trained_like(STDiT3, 2)
    full = model.save_pretrained(str(tmp_path / "fp32"))
    half = model.save_pretrained(str(tmp_path / "fp16"), dtype="float16")
    size = lambda d: os.path.getsize(os.path.join(d, "model.safetensors"))  # noqa: E731
    assert 0.45 < size(half) / size(full) < 0.55
    loaded = STDiT3.from_pretrained(half)
    for k, v in loaded.state_dict().items():
        ref = model.state_dict()[k].numpy()
        assert v.dtype == paddle.float32, k
        np.testing.assert_array_equal(v.numpy(), ref.astype("float16").astype("float32"))
    x, t, y, x_mask = _inputs()
    with paddle.no_grad():
        ref = model(x, t, y, x_mask=x_mask, num_frames=3, height=32, width=32, ar=1.0, fps=8)
        out = loaded(x, t, y, x_mask=x_mask, num_frames=3, height=32, width=32, ar=1.0, fps=8)
    np.testing.assert_allclose(out.numpy(), ref.numpy(), atol=2e-3)
    assert not np.array_equal(out.numpy(), ref.numpy())  # the rounding is real


def test_unsupported_storage_dtype_writes_nothing(tmp_path):
    with pytest.raises(ValueError, match=r"storage dtype 'int8' is not supported; accepted: \['float32', 'float16'\]"):
        _trained_like(STDiT3, 2).save_pretrained(str(tmp_path / "out"), dtype="int8")
    assert not os.path.exists(tmp_path / "out")


def test_cast_script(tmp_path):
    src = _trained_like(STDiT3, 2).save_pretrained(str(tmp_path / "src"))
    run = lambda *a: subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "cast_dit_weights.py"), *a],  # noqa: E731
                                    capture_output=True, text=True, cwd=ROOT)
    done = run("--model", "STDiT3", "--input", src, "--dtype", "float16", "--output", str(tmp_path / "half"))
    assert done.returncode == 0, done.stderr
    assert "stored as float16" in done.stdout and "largest weight change" in done.stdout
    assert STDiT3.from_pretrained(str(tmp_path / "half")).depth == 2
    same = run("--model", "STDiT3", "--input", src, "--dtype", "float16", "--output", src)
    assert same.returncode != 0 and "is the input folder" in same.stderr
    missing = run("--model", "STDiT3", "--input", str(tmp_path / "nope"), "--dtype", "float16", "--output", str(tmp_path / "x"))
    assert missing.returncode != 0 and "model folder not found" in missing.stderr and not os.path.exists(tmp_path / "x")
