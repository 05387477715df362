"""STDiT behaviour beyond the fixtures: save/load, the converter CLI, bad input, other configs."""
import json
import os
import subprocess
import sys

import numpy as np
import paddle
import pytest
from safetensors.numpy import load_file, save_file

from models.stdit import STDiT2, STDiT3, build_model

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = dict(depth=1, hidden_size=48, num_heads=2, caption_channels=16, model_max_length=6, input_sq_size=64)


def _inputs(B=2, T=3, H=6, W=6, L=6, C=4, caption=16):
    paddle.seed(1)
    return dict(
        x=paddle.randn([B, C, T, H, W]),
        timestep=paddle.to_tensor([5.0, 700.0][:B]),
        y=paddle.randn([B, 1, L, caption]),
        mask=paddle.to_tensor([[1] * L, [1] * 2 + [0] * (L - 2)][:B], dtype="int64"),
        num_frames=T,
        height=H * 8,
        width=W * 8,
        ar=1.0,
        fps=24,
    )


@pytest.mark.parametrize("cls", [STDiT2, STDiT3])
def test_save_and_load_round_trip(tmp_path, cls):
    model = cls(**TINY)
    model.eval()
    kw = _inputs()
    out = model(**kw).numpy()
    path = model.save_pretrained(str(tmp_path / "ckpt"))
    assert sorted(os.listdir(path)) == ["config.json", "model.safetensors"]
    again = cls.from_pretrained(path)
    again.eval()
    np.testing.assert_array_equal(again(**kw).numpy(), out)
    assert again.config == model.config
    # saving over an existing folder replaces it and leaves no temporary folder behind
    model.save_pretrained(path)
    assert sorted(os.listdir(tmp_path)) == ["ckpt"]


@pytest.mark.parametrize("cls", [STDiT2, STDiT3])
def test_missing_key_in_checkpoint_folder_is_named(tmp_path, cls):
    path = cls(**TINY).save_pretrained(str(tmp_path / "ckpt"))
    state = load_file(os.path.join(path, "model.safetensors"))
    del state["final_layer.linear.bias"]
    save_file(state, os.path.join(path, "model.safetensors"))
    with pytest.raises(ValueError, match=r"missing keys \(1\): final_layer.linear.bias"):
        cls.from_pretrained(path)


def test_wrong_model_type_and_missing_folder(tmp_path):
    path = STDiT2(**TINY).save_pretrained(str(tmp_path / "s2"))
    with pytest.raises(ValueError, match="holds a STDiT2 model, not STDiT3"):
        STDiT3.from_pretrained(path)
    with pytest.raises(FileNotFoundError, match="model folder not found"):
        STDiT2.from_pretrained(str(tmp_path / "nope"))


@pytest.mark.parametrize("cls", [STDiT2, STDiT3])
def test_bad_inputs_raise_clear_errors(cls):
    model = cls(**TINY)
    model.eval()
    kw = _inputs()
    with pytest.raises(ValueError, match=r"latent x must have shape \[B, 4, T, H, W\].*\[2, 3, 3, 6, 6\]"):
        model(**dict(kw, x=paddle.randn([2, 3, 3, 6, 6])))
    with pytest.raises(ValueError, match=r"latent x must have shape"):
        model(**dict(kw, x=paddle.randn([2, 4, 6, 6])))
    with pytest.raises(ValueError, match=r"y must have shape \[B, 1, L, 16\].*\[2, 1, 6, 20\]"):
        model(**dict(kw, y=paddle.randn([2, 1, 6, 20])))
    with pytest.raises(ValueError, match=r"text mask must have shape \[B, L\]"):
        model(**dict(kw, mask=paddle.ones([2, 5], dtype="int64")))
    with pytest.raises(ValueError, match=r"x_mask must have shape"):
        model(**dict(kw, x_mask=paddle.ones([2, 4], dtype="bool")))
    with pytest.raises(ValueError, match="needs `height`"):
        model(**dict(kw, height=None))
    with pytest.raises(ValueError, match="no valid token"):
        model(**dict(kw, mask=paddle.zeros([2, 6], dtype="int64")))


@pytest.mark.parametrize("cls", [STDiT2, STDiT3])
def test_temporal_patch_and_padding(cls):
    """patch (2, 2, 2) with odd T/H/W: output keeps the input size; x_mask is per token frame."""
    model = cls(**dict(TINY, patch_size=(2, 2, 2)))
    model.eval()
    kw = _inputs(T=5, H=7, W=5)
    out = model(**kw)
    assert out.shape == [2, 8, 5, 7, 5]
    all_true = paddle.ones([2, 3], dtype="bool")
    np.testing.assert_allclose(model(**dict(kw, x_mask=all_true)).numpy(), out.numpy(), atol=1e-6)
    with pytest.raises(ValueError, match=r"ceil\(T / patch_size\[0\]\)\] = \[2, 3\]"):
        model(**dict(kw, x_mask=paddle.ones([2, 5], dtype="bool")))


@pytest.mark.parametrize("cls", [STDiT2, STDiT3])
def test_condition_frames_change_only_through_x_mask(cls):
    """x_mask all True = no x_mask; marking a frame as condition changes the output."""
    model = cls(**TINY)
    # non-zero output layers so every path shows in the output
    for p in model.parameters():
        p.set_value(p + 0.02 * paddle.randn(p.shape))
    model.eval()
    kw = _inputs()
    base = model(**kw).numpy()
    same = model(**dict(kw, x_mask=paddle.ones([2, 3], dtype="bool"))).numpy()
    np.testing.assert_allclose(same, base, atol=1e-6)
    x_mask = paddle.to_tensor([[False, True, True], [True, True, True]])
    diff = np.abs(model(**dict(kw, x_mask=x_mask)).numpy() - base)
    assert diff[0].max() > 1e-4 and diff[1].max() < 1e-6


def test_build_model_presets_and_unknown_names():
    assert isinstance(build_model("STDiT2", **TINY), STDiT2)
    with pytest.raises(ValueError, match="unknown model 'STDiT9'"):
        build_model("STDiT9")
    with pytest.raises(ValueError, match=r"unknown STDiT3 config keys \['no_such_key'\]"):
        STDiT3.from_config(dict(TINY, no_such_key=1))
    with pytest.raises(ValueError, match="enable_sequence_parallelism=True is not supported"):
        STDiT3(**TINY, enable_sequence_parallelism=True)


def _run_converter(*args):
    return subprocess.run(
        [sys.executable, os.path.join(ROOT, "scripts", "convert_opensora_weights.py"), *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )


def test_converter_cli_turns_fixture_weights_into_a_loadable_folder(tmp_path, fixtures_dir):
    ref = os.path.join(fixtures_dir, "opensora_ref")
    with open(os.path.join(ref, "stdit2_v1.1.0.json")) as f:
        meta = json.load(f)
    config = tmp_path / "config.json"
    # an upstream / Hugging Face config carries bookkeeping keys besides the model keywords
    config.write_text(json.dumps(dict(meta["config_kwargs"], model_type="STDiT2", architectures=["STDiT2"])))
    out = tmp_path / "converted"
    res = _run_converter(
        "--model", "STDiT2", "--input", os.path.join(ref, "stdit2_v1.1.0_tiny_weights.safetensors"),
        "--config", str(config), "--output", str(out),
    )
    assert res.returncode == 0, res.stderr
    assert "converted STDiT2" in res.stdout
    model = STDiT2.from_pretrained(str(out))
    model.eval()
    io = np.load(os.path.join(ref, "stdit2_v1.1.0_tiny_io.npz"))
    kw = {k: paddle.to_tensor(io[f"main.{k}"]) for k in meta["cases"]["main"]["inputs"]}
    assert np.abs(model(**kw).numpy() - io["main.out"]).max() <= 1e-4

    # a checkpoint with a missing and an extra key: both listed, nothing written
    state = load_file(os.path.join(ref, "stdit2_v1.1.0_tiny_weights.safetensors"))
    del state["blocks.0.attn.proj.bias"]
    state["blocks.9.extra"] = np.zeros(3, np.float32)
    bad = tmp_path / "bad.safetensors"
    save_file(state, str(bad))
    res = _run_converter("--model", "STDiT2", "--input", str(bad), "--config", str(config), "--output", str(tmp_path / "o2"))
    assert res.returncode != 0
    assert "missing keys (1): blocks.0.attn.proj.bias" in res.stderr
    assert "unexpected keys (1): blocks.9.extra" in res.stderr
    assert not (tmp_path / "o2").exists()

    # a config for the wrong width: the shape mismatch is named
    config.write_text(json.dumps(dict(meta["config_kwargs"], hidden_size=48)))
    res = _run_converter("--model", "STDiT2", "--input", str(bad), "--config", str(config), "--output", str(tmp_path / "o3"))
    assert res.returncode != 0 and "shape mismatches" in res.stderr
