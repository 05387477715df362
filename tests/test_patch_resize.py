"""Resizing a trained STDiT to a finer patch (models/stdit/patch_resize.py, scripts/resize_dit_patch.py)."""
import os
import subprocess
import sys

import numpy as np
import paddle
import pytest

from models.stdit import STDiT2, STDiT3
from models.stdit.patch_resize import patch_factors, resize_final_layer, resize_patch, resize_patch_embed

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = dict(depth=1, hidden_size=48, num_heads=2, caption_channels=16, model_max_length=6, input_sq_size=64)


def _trained_like(cls, patch):
    """A tiny model whose zero-initialised layers get random values (as after training)."""
    paddle.seed(3)
    model = cls(patch_size=patch, **TINY)
    rng = np.random.default_rng(0)
    model.set_state_dict({k: paddle.to_tensor(rng.normal(0, 0.05, v.shape).astype("float32"))
                          for k, v in model.state_dict().items()})
    model.eval()
    return model


def test_patch_embed_of_a_patch_equals_old_embed_of_the_upsampled_patch():
    rng = np.random.default_rng(1)
    old = rng.normal(size=(5, 3, 1, 4, 4)).astype("float32")
    new = resize_patch_embed(old, (1, 2, 2))
    assert new.shape == (5, 3, 1, 2, 2)
    patch = rng.normal(size=(3, 1, 2, 2)).astype("float32")
    up = patch.repeat(2, axis=2).repeat(2, axis=3)  # nearest x2 -> [3, 1, 4, 4]
    np.testing.assert_allclose(np.einsum("hctij,ctij->h", new, patch), np.einsum("hctij,ctij->h", old, up), rtol=1e-5)


def test_final_layer_outputs_are_the_mean_of_the_old_outputs_they_cover():
    rng = np.random.default_rng(2)
    C = 4
    w = rng.normal(size=(6, 16 * C)).astype("float32")
    b = rng.normal(size=(16 * C,)).astype("float32")
    nw, nb = resize_final_layer(w, b, (1, 4, 4), (1, 2, 2), C)
    assert nw.shape == (6, 4 * C) and nb.shape == (4 * C,)
    h = rng.normal(size=(6,)).astype("float32")
    old_out = (h @ w + b).reshape(4, 4, C)  # (ph, pw, C) order of unpatchify
    new_out = (h @ nw + nb).reshape(2, 2, C)
    np.testing.assert_allclose(new_out, old_out.reshape(2, 2, 2, 2, C).mean(axis=(1, 3)), rtol=1e-5, atol=1e-6)


def test_resized_stdit3_on_a_latent_equals_the_old_model_on_it_upsampled():
    old = _trained_like(STDiT3, (1, 4, 4))
    new = resize_patch(old, (1, 2, 2))
    assert new.patch_size == (1, 2, 2) and new.config["patch_size"] == [1, 2, 2]
    assert new.config["input_sq_size"] == 32  # positions keep the old patch as unit
    paddle.seed(4)
    x = paddle.randn([2, 4, 3, 8, 8])
    y = paddle.randn([2, 1, 6, 16])
    t = paddle.to_tensor([100.0, 900.0])
    up = x.repeat_interleave(2, axis=3).repeat_interleave(2, axis=4)
    with paddle.no_grad():
        ref = old(up, t, y, height=64, width=64, fps=8).reshape([2, old.out_channels, 3, 8, 2, 8, 2])
        ref = ref.mean(axis=[4, 6])
        out = new(x, t, y, height=32, width=32, fps=8)
    assert out.shape == [2, old.out_channels, 3, 8, 8]
    np.testing.assert_allclose(out.numpy(), ref.numpy(), atol=1e-5)
    # and the resized model is really a different function of x than the old one at its own size
    assert float((out - old(x, t, y, height=32, width=32, fps=8)).abs().mean()) > 1e-3


def test_resized_stdit2_keeps_every_other_weight():
    old = _trained_like(STDiT2, (1, 2, 2))
    new = resize_patch(old, (1, 1, 1))
    a, b = old.state_dict(), new.state_dict()
    assert set(a) == set(b)
    changed = {k for k in a if a[k].shape != b[k].shape or not np.array_equal(a[k].numpy(), b[k].numpy())}
    assert changed == {"x_embedder.proj.weight", "final_layer.linear.weight", "final_layer.linear.bias"}


@pytest.mark.parametrize("old, new", [((1, 4, 4), (1, 3, 3)), ((1, 2, 2), (1, 4, 4)), ((1, 2, 2), (1, 2))])
def test_a_patch_that_does_not_divide_raises(old, new):
    with pytest.raises(ValueError, match="patch_size"):
        patch_factors(old, new)


def test_cli_writes_a_loadable_folder_and_rejects_a_bad_patch(tmp_path):
    src = _trained_like(STDiT3, (1, 4, 4)).save_pretrained(str(tmp_path / "src"))
    script = os.path.join(ROOT, "scripts", "resize_dit_patch.py")
    run = lambda *a: subprocess.run([sys.executable, script, "--model", "STDiT3", "--input", src, *a],
                                    capture_output=True, text=True, cwd=ROOT)
    ok = run("--patch-size", "1", "2", "2", "--output", str(tmp_path / "p2"))
    assert ok.returncode == 0, ok.stderr
    assert STDiT3.from_pretrained(str(tmp_path / "p2")).patch_size == (1, 2, 2)
    bad = run("--patch-size", "1", "3", "3", "--output", str(tmp_path / "p3"))
    assert bad.returncode != 0
    assert bad.stderr.strip().splitlines()[-1].startswith("error:") and "[1, 3, 3]" in bad.stderr
    assert not (tmp_path / "p3").exists()
