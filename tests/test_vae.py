"""VideoAutoencoderKL against the diffusers reference run of the tiny fixture VAE."""
import os
import shutil

import numpy as np
import paddle
import pytest
from safetensors.numpy import load_file, save_file

from models.vae import VideoAutoencoderKL

TOL = 1e-4
SF = 0.18215


@pytest.fixture(scope="module")
def vae_dir(fixtures_dir):
    return os.path.join(fixtures_dir, "hf_tiny", "vae_diffusers")


@pytest.fixture(scope="module")
def ref(fixtures_dir):
    return dict(np.load(os.path.join(fixtures_dir, "hf_tiny", "vae_diffusers_ref.npz")))


@pytest.fixture(scope="module")
def vae(vae_dir):
    return VideoAutoencoderKL.from_pretrained(vae_dir, deterministic=True)


def _maxdiff(a, b):
    a = a.numpy() if isinstance(a, paddle.Tensor) else a
    return float(np.abs(a - b).max())


def _video(ref):
    """[2, 3, 3, 32, 48]: crops of the two reference images and a blend, in different frame orders."""
    x0, x1 = ref["x"][0, :, :32, :48], ref["x"][1, :, 16:48, 8:56]
    blend = 0.5 * (x0 + x1)
    frames = [[x0, x1, blend], [blend, x0, x1]]
    return np.stack([np.stack(clip, axis=1) for clip in frames]).astype(np.float32)


def test_2d_module_matches_reference(vae, ref):
    dist = vae.module.encode(paddle.to_tensor(ref["x"])).latent_dist
    assert _maxdiff(dist.mean, ref["mean"]) <= TOL
    assert _maxdiff(dist.std, ref["std"]) <= TOL
    dec = vae.module.decode(paddle.to_tensor(ref["z"])).sample
    assert _maxdiff(dec, ref["dec"]) <= TOL


def test_video_wrapper_matches_reference(vae, ref):
    x = paddle.to_tensor(ref["x"]).transpose([1, 0, 2, 3]).unsqueeze(0)  # [1, 3, T=2, 64, 64]
    z = vae.encode(x)
    assert list(z.shape) == [1, 4, 2, 32, 32]
    mean = ref["mean"].transpose(1, 0, 2, 3)[None]  # [1, 4, 2, 32, 32]
    assert _maxdiff(z / SF, mean) <= TOL

    z_ref = paddle.to_tensor(ref["z"]).transpose([1, 0, 2, 3]).unsqueeze(0) * SF  # [1, 4, 2, 32, 32]
    dec = vae.decode(z_ref)
    assert list(dec.shape) == [1, 3, 2, 64, 64]
    assert _maxdiff(dec, ref["dec"].transpose(1, 0, 2, 3)[None]) <= TOL


def test_video_is_per_frame(vae, ref):
    x = paddle.to_tensor(_video(ref))
    z = vae.encode(x)
    dec = vae.decode(z)
    assert list(z.shape) == [2, 4, 3, 16, 24] and list(dec.shape) == [2, 3, 3, 32, 48]
    for t in range(3):
        frame_mean = vae.module.encode(x[:, :, t]).latent_dist.mean
        assert _maxdiff(z[:, :, t], (frame_mean * SF).numpy()) <= 1e-5
        frame_dec = vae.module.decode(z[:, :, t] / SF).sample
        assert _maxdiff(dec[:, :, t], frame_dec.numpy()) <= 1e-5


@pytest.mark.parametrize("micro_batch_size", [1, 4])  # 4: chunks of 4 + 2 frames
def test_micro_batching_changes_nothing(vae, ref, micro_batch_size):
    x = paddle.to_tensor(_video(ref))
    chunked = VideoAutoencoderKL(vae.module, micro_batch_size=micro_batch_size, deterministic=True)
    z_all, z_chunked = vae.encode(x), chunked.encode(x)
    assert _maxdiff(z_chunked, z_all.numpy()) <= 1e-5
    assert _maxdiff(chunked.decode(z_all), vae.decode(z_all).numpy()) <= 1e-5


def test_sampling_with_seed(vae, ref):
    x = paddle.to_tensor(_video(ref))
    sampler = VideoAutoencoderKL(vae.module)
    chunked = VideoAutoencoderKL(vae.module, micro_batch_size=2)
    a, b, c = sampler.encode(x, seed=3), chunked.encode(x, seed=3), sampler.encode(x, seed=4)
    assert _maxdiff(a, b.numpy()) <= 1e-5  # the noise does not depend on micro-batching
    assert _maxdiff(a, c.numpy()) > 1e-3  # another seed, another sample
    frames = paddle.to_tensor(_video(ref)).transpose([0, 2, 1, 3, 4]).reshape([6, 3, 32, 48])
    dist = vae.module.encode(frames).latent_dist
    noise = np.random.default_rng(3).standard_normal((6, 4, 16, 24), dtype=np.float32)
    expected = (dist.mean.numpy() + dist.std.numpy() * noise) * SF  # [(B T), 4, 16, 24]
    expected = expected.reshape(2, 3, 4, 16, 24).transpose(0, 2, 1, 3, 4)
    assert _maxdiff(a, expected) <= 1e-5
    # deterministic ignores the seed and returns the scaled mean
    assert _maxdiff(vae.encode(x, seed=3), vae.encode(x).numpy()) == 0.0


def test_gradients_reach_the_input(vae, ref):
    x = paddle.to_tensor(_video(ref)[:1], stop_gradient=False)
    vae.encode(x).sum().backward()  # encode is not wrapped in no_grad: the caller decides
    assert x.grad is not None and float(x.grad.abs().sum()) > 0


def test_sizes_come_from_the_config(vae):
    assert vae.spatial_factor == 2  # block_out_channels [32, 64]
    assert vae.patch_size == (1, 2, 2)
    assert vae.out_channels == 4
    assert vae.get_latent_size([None, 64, 64]) == [None, 32, 32]
    assert vae.get_latent_size([5, 64, 48]) == [5, 32, 24]
    with pytest.raises(ValueError, match="not divisible"):
        vae.get_latent_size([5, 63, 64])
    with pytest.raises(ValueError, match=r"\[T, H, W\]"):
        vae.get_latent_size([64, 64])


def test_bad_inputs(vae):
    with pytest.raises(ValueError, match=r"\[B, 3, T, H, W\].*\[1, 4, 2, 64, 64\]"):
        vae.encode(paddle.zeros([1, 4, 2, 64, 64]))
    with pytest.raises(ValueError, match=r"\[1, 3, 64, 64\]"):
        vae.encode(paddle.zeros([1, 3, 64, 64]))
    with pytest.raises(ValueError, match=r"H=63.*divisible.*2"):
        vae.encode(paddle.zeros([1, 3, 2, 63, 64]))
    with pytest.raises(ValueError, match=r"\[B, 4, T, H, W\]"):
        vae.decode(paddle.zeros([1, 3, 2, 32, 32]))
    with pytest.raises(ValueError, match="paddle.Tensor"):
        vae.encode(np.zeros([1, 3, 2, 64, 64], np.float32))
    with pytest.raises(ValueError, match="seed"):
        vae.encode(paddle.zeros([1, 3, 1, 64, 64]), seed=1.5)
    with pytest.raises(ValueError, match="micro_batch_size"):
        VideoAutoencoderKL(vae.module, micro_batch_size=0)
    with pytest.raises(ValueError, match="scaling_factor"):
        VideoAutoencoderKL(vae.module, scaling_factor=-1.0)


def test_missing_folder(tmp_path):
    missing = str(tmp_path / "no_such_vae")
    with pytest.raises(ValueError, match="no_such_vae"):
        VideoAutoencoderKL.from_pretrained(missing)


def test_checkpoint_missing_a_tensor(vae_dir, tmp_path):
    weights = load_file(os.path.join(vae_dir, "diffusion_pytorch_model.safetensors"))
    del weights["decoder.conv_in.bias"]
    shutil.copy(os.path.join(vae_dir, "config.json"), tmp_path / "config.json")
    save_file(weights, str(tmp_path / "diffusion_pytorch_model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(ValueError, match=r"decoder\.conv_in\.bias"):
        VideoAutoencoderKL.from_pretrained(str(tmp_path))


def test_save_pretrained_round_trip(vae, vae_dir, ref, tmp_path):
    before = sorted(os.listdir(vae_dir))
    out = tmp_path / "saved_vae"
    vae.save_pretrained(str(out))
    assert sorted(os.listdir(out)) == ["config.json", "diffusion_pytorch_model.safetensors"]
    assert [p.name for p in tmp_path.iterdir()] == ["saved_vae"]  # no temporary folder left behind
    again = VideoAutoencoderKL.from_pretrained(str(out), deterministic=True)
    z = paddle.to_tensor(ref["z"]).unsqueeze(2) * SF  # [2, 4, 1, 32, 32]
    assert _maxdiff(again.decode(z), vae.decode(z).numpy()) == 0.0
    assert sorted(os.listdir(vae_dir)) == before
