"""Rectified-flow scheduler: fidelity to upstream Open-Sora v1.2.0 (fixtures) and masked sampling."""
import json
import os

import numpy as np
import paddle
import pytest

from schedulers.rflow import RFlow, frame_mask_at_step, timestep_transform

ATOL = RTOL = 1e-5


@pytest.fixture(scope="module")
def ref(fixtures_dir):
    base = os.path.join(fixtures_dir, "opensora_ref", "rflow_v1.2.0")
    with open(base + ".json") as f:
        meta = json.load(f)
    return dict(np.load(base + ".npz")), meta


def close(actual, expected, atol=ATOL, rtol=RTOL):
    actual = actual.numpy() if isinstance(actual, paddle.Tensor) else np.asarray(actual)
    expected = np.asarray(expected)
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    np.testing.assert_allclose(actual.astype(np.float64), expected.astype(np.float64), atol=atol, rtol=rtol)


def make_dummy(npz):
    """The fixture's stand-in model (formula in rflow_v1.2.0.json `dummy_model`); records timesteps."""
    w = paddle.to_tensor(npz["dummy.w"])  # [2C, C]
    b = paddle.to_tensor(npz["dummy.b"])  # [2C]
    seen = []

    def model(x, t, y=None, **kwargs):
        seen.append(t.numpy().copy())
        C = x.shape[1]
        h = paddle.einsum("oc,bcthw->bothw", w, x) + b.reshape([1, -1, 1, 1, 1])
        s = (1 + t.astype("float32") / 1000).reshape([-1, 1, 1, 1, 1])
        my = (0.1 * y.mean(axis=[1, 2, 3])).reshape([-1, 1, 1, 1, 1]) if y is not None else 0.0
        return paddle.concat([h[:, :C] * s + my, paddle.tanh(h[:, C:] * s + my)], axis=1)

    model.seen = seen
    return model


def settings(meta):
    """{(name, transform, discrete): (model_args, timesteps)} from the fixture's timestep table."""
    out = {}
    for key, value in meta["timesteps"].items():
        res, ar, frames, tr, di = key.split("|")
        name = f"{res}_{ar.replace(':', 'x')}_{frames}"
        key = (name, tr.endswith("True"), di.endswith("True"))
        out[key] = (value["model_args"], value["timesteps_passed_to_model"])
    return out


# ---------------------------------------------------------------------------------------------
# timesteps
# ---------------------------------------------------------------------------------------------
def test_sampling_timesteps_for_every_setting(ref):
    _, meta = ref
    table = settings(meta)
    assert len(table) == 24
    for (name, transform, discrete), (args, expected) in table.items():
        s = RFlow(num_sampling_steps=30, use_timestep_transform=transform, use_discrete_timesteps=discrete)
        s.set_timesteps(30, height=args["height"][0], width=args["width"][0], num_frames=args["num_frames"][0])
        assert s.timesteps.dtype == (paddle.int64 if discrete and not transform else paddle.float32), name
        close(s.timesteps, expected, atol=0, rtol=0)


def test_timestep_transform_direct(ref):
    _, meta = ref
    grid = paddle.to_tensor(np.array([(1 - i / 30) * 1000 for i in range(30)], np.float32))
    for key, expected in meta["timestep_transform_direct"].items():
        size, frames = key.split("|")
        h, w = map(float, size.split("x"))
        close(timestep_transform(grid, h, w, float(frames), num_timesteps=1000), expected, atol=0, rtol=0)


def test_timestep_transform_per_sample_and_bad_frames():
    t = paddle.to_tensor([500.0, 500.0])
    frames = paddle.to_tensor([1.0, 51.0])
    both = timestep_transform(t, paddle.to_tensor([512.0, 512.0]), 512.0, frames, num_timesteps=1000)
    one = timestep_transform(t[:1], 512.0, 512.0, 1.0, num_timesteps=1000)
    video = timestep_transform(t[:1], 512.0, 512.0, 51.0, num_timesteps=1000)
    close(both, np.concatenate([one.numpy(), video.numpy()]), atol=0, rtol=0)
    assert one.item() == 500.0 and video.item() > 500.0  # 512^2 image: no shift; 15 latent frames: shift
    with pytest.raises(ValueError, match="num_frames"):
        timestep_transform(t, 512.0, 512.0, 16.0)


def test_set_timesteps_checks_input():
    s = RFlow(use_timestep_transform=True)
    assert s.timesteps is None
    with pytest.raises(ValueError, match="set_timesteps"):
        s.step(paddle.zeros([1, 4, 1, 2, 2]), 1000.0, paddle.zeros([1, 4, 1, 2, 2]))
    with pytest.raises(ValueError, match="height"):
        s.set_timesteps(10)
    with pytest.raises(ValueError, match="num_sampling_steps"):
        RFlow().set_timesteps(0)
    with pytest.raises(ValueError, match="sample_method"):
        RFlow(sample_method="beta")
    with pytest.raises(ValueError, match="uniform"):
        RFlow(sample_method="logit-normal", use_discrete_timesteps=True)


# ---------------------------------------------------------------------------------------------
# add_noise, training losses
# ---------------------------------------------------------------------------------------------
def test_add_noise(ref):
    npz, _ = ref
    s = RFlow()
    x0, noise = paddle.to_tensor(npz["train.x_start"]), paddle.to_tensor(npz["train.noise"])
    close(s.add_noise(x0, noise, paddle.to_tensor(npz["train.t"])), npz["train.add_noise"], atol=0, rtol=0)
    close(s.add_noise(x0, noise, 1000), noise, atol=0, rtol=0)
    close(s.add_noise(x0, noise, 0), x0, atol=0, rtol=0)
    with pytest.raises(ValueError, match="entries"):
        s.add_noise(x0, noise, paddle.to_tensor([1.0, 2.0]))


@pytest.mark.parametrize("variant", ["nomask", "mask", "weighted_long_t"])
def test_training_losses_match_upstream(ref, variant):
    npz, _ = ref
    s = RFlow()
    model = make_dummy(npz)
    t = paddle.to_tensor(npz["train.t"])
    kwargs = {}
    if variant == "mask":
        kwargs["mask"] = paddle.to_tensor(npz["train.mask"])
    if variant == "weighted_long_t":
        t = t.astype("int64")  # the fixture indexes the weights with t.long()
        kwargs["weights"] = npz["train.weights"]
    terms = s.training_losses(
        model,
        paddle.to_tensor(npz["train.x_start"]),
        t,
        model_kwargs={"y": paddle.to_tensor(npz["train.y"])},
        noise=paddle.to_tensor(npz["train.noise"]),
        **kwargs,
    )
    assert set(terms) == {"loss"}
    close(terms["loss"], npz[f"train.{variant}.loss"])


def test_weights_with_float_t_truncate(ref):
    npz, _ = ref
    s = RFlow()
    model = make_dummy(npz)
    x0, noise = paddle.to_tensor(npz["train.x_start"]), paddle.to_tensor(npz["train.noise"])
    t = paddle.to_tensor([0.0, 250.5, 999.0, 1000.0])
    plain = s.training_losses(model, x0, t, noise=noise)["loss"].numpy()
    weighted = s.training_losses(model, x0, t, noise=noise, weights=npz["train.weights"])["loss"].numpy()
    close(weighted, plain * npz["train.weights"][[0, 250, 999, 1000]], atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize(
    "kwargs,check",
    [
        ({}, lambda t: t.dtype == paddle.float32 and ((t >= 0) & (t < 1000)).all()),
        ({"sample_method": "logit-normal"}, lambda t: ((t > 0) & (t < 1000)).all()),
        ({"use_discrete_timesteps": True}, lambda t: t.dtype == paddle.int64 and ((t >= 0) & (t < 1000)).all()),
    ],
)
def test_training_time_sampling(kwargs, check):
    s = RFlow(**kwargs)
    paddle.seed(0)
    t = s.sample_t(4096)
    assert bool(check(t))
    if kwargs.get("sample_method") == "logit-normal":  # sigmoid(N(0, 1)): median 500, P(250..750) = 0.73
        v = t.numpy()
        assert abs(np.median(v) - 500) < 25 and 0.70 < np.mean((v > 250) & (v < 750)) < 0.76


def test_training_with_transform_uses_model_kwargs(ref):
    npz, _ = ref
    s = RFlow(use_timestep_transform=True, sample_method="logit-normal")
    model = make_dummy(npz)
    x0 = paddle.to_tensor(npz["train.x_start"])
    with pytest.raises(ValueError, match="height"):
        s.training_losses(model, x0)
    paddle.seed(3)
    kw = {"height": paddle.full([4], 720.0), "width": paddle.full([4], 1280.0), "num_frames": paddle.full([4], 102.0)}
    s.training_losses(model, x0, model_kwargs=kw)
    paddle.seed(3)
    raw = RFlow(sample_method="logit-normal").sample_t(4)
    close(model.seen[-1], timestep_transform(raw, 720.0, 1280.0, 102.0, num_timesteps=1000))


# ---------------------------------------------------------------------------------------------
# sampling
# ---------------------------------------------------------------------------------------------
def _run(s, model, z, y_cond, y_null):
    y = paddle.concat([y_cond, y_null])
    for t in s.timesteps:
        out = model(paddle.concat([z, z]), paddle.full([2 * z.shape[0]], float(t), "float32"), y=y)
        cond, uncond = out.chunk(2, axis=0)
        z = s.step(s.guidance(cond, uncond), t, z)
    return z


def test_dummy_model_sampling_runs_match_upstream(ref):
    npz, meta = ref
    z0 = paddle.to_tensor(npz["sample.z"])
    y = paddle.to_tensor(npz["sample.y"])
    y_null = paddle.to_tensor(npz["sample.y_null_table"])[None, None]  # [1, 1, L, C]
    table = settings(meta)
    runs = 0
    for (name, transform, discrete), (args, expected_ts) in table.items():
        if discrete:
            continue
        s = RFlow(num_sampling_steps=30, cfg_scale=7.0, use_timestep_transform=transform)
        s.set_timesteps(height=args["height"][0], width=args["width"][0], num_frames=args["num_frames"][0])
        model = make_dummy(npz)
        z = _run(s, model, z0, y, y_null)
        close(z, npz[f"sample.{name}.transform{int(transform)}.z_final"])
        close(np.array([v[0] for v in model.seen]), expected_ts, atol=0, rtol=0)
        runs += 1
    assert runs == 12


def test_euler_steps_cover_the_whole_interval():
    s = RFlow(num_sampling_steps=7, use_timestep_transform=True)
    s.set_timesteps(height=480, width=854, num_frames=51)
    z = paddle.zeros([1, 1, 1, 1, 1])
    for t in s.timesteps:
        z = s.step(paddle.ones([1, 1, 1, 1, 1]), t, z)
    assert z.item() == pytest.approx(1.0, abs=1e-6)  # dt's sum to t_0 / T = 1
    with pytest.raises(ValueError, match="not one of"):
        s.step(paddle.ones([1, 1, 1, 1, 1]), 123.0, z)


# ---------------------------------------------------------------------------------------------
# masked sampling (SPEC §4 with upstream v1.2 semantics)
# ---------------------------------------------------------------------------------------------
def _upstream_masked_loop(s, model, z, mask, noises, y):
    """Upstream v1.2 RFLOW.sample(mask=...) semantics, written out independently (no guidance)."""
    T = s.num_timesteps
    noise_added = mask == 1
    ts = [s.timesteps[i] for i in range(s.timesteps.shape[0])]
    for i, t in enumerate(ts):
        mask_t = mask * T
        x0 = z
        x_noise = s.add_noise(x0, noises[i], t)
        upper = mask_t >= t.astype("float32")
        add = upper & paddle.logical_not(noise_added)
        z = paddle.where(add.unsqueeze(1).unsqueeze(-1).unsqueeze(-1).expand(z.shape), x_noise, x0)
        noise_added = upper
        v = model(z, paddle.full([z.shape[0]], float(t), "float32"), y=y)[:, : z.shape[1]]
        dt = (ts[i] - ts[i + 1] if i < len(ts) - 1 else ts[i]).astype("float32") / T
        z = z + v * dt
        z = paddle.where(upper.unsqueeze(1).unsqueeze(-1).unsqueeze(-1).expand(z.shape), z, x0)
    return z


def test_masked_sampling_matches_upstream_and_fixes_edges(ref):
    npz, _ = ref
    s = RFlow(num_sampling_steps=10, use_timestep_transform=True)
    s.set_timesteps(height=512, width=512, num_frames=51)
    model = make_dummy(npz)
    rng = np.random.default_rng(2)
    shape = [2, 4, 5, 4, 4]
    reference = paddle.to_tensor(rng.standard_normal(shape).astype(np.float32))
    noises = [paddle.to_tensor(rng.standard_normal(shape).astype(np.float32)) for _ in range(10)]
    y = paddle.to_tensor(npz["train.y"][:2])
    m = paddle.to_tensor([[0.0, 0.4, 1.0, 0.75, 0.05], [1.0, 1.0, 0.0, 0.2, 0.99]])
    gen = (m >= 1).unsqueeze(1).unsqueeze(-1).unsqueeze(-1).expand(shape)
    z_start = paddle.where(gen, noises[0], reference)  # what a pipeline builds

    z = z_start
    x_masks = []
    for i, t in enumerate(s.timesteps):
        z, x_mask = s.apply_frame_mask(z, reference, m, t, noise=noises[i])
        x_masks.append(x_mask.numpy())
        out = model(z, paddle.full([2], float(t), "float32"), y=y)
        z = s.step(out, t, z)
        z = s.restore_held_frames(z, reference, m, t)

    upstream = _upstream_masked_loop(s, model, z_start, m, noises, y)
    close(z, upstream, atol=1e-6, rtol=1e-6)
    mine, ref_np, m_np = z.numpy(), reference.numpy(), m.numpy()
    np.testing.assert_array_equal(mine[0, :, 0], ref_np[0, :, 0])  # edit ratio 0: exactly the reference
    np.testing.assert_array_equal(mine[1, :, 2], ref_np[1, :, 2])
    # x_mask[i] = m * T >= t_i (edit ratio 1 always, 0 never)
    ts = s.timesteps.numpy()
    expected = (m_np[None] * 1000 >= ts[:, None, None]) & (m_np[None] > 0)
    np.testing.assert_array_equal(np.array(x_masks), expected)


def test_edit_ratio_one_frames_start_from_noise_even_with_reference_written():
    """hpcaitech issue 695: upstream v1.2 marks edit-ratio-1 frames as already noised."""
    s = RFlow(num_sampling_steps=4)
    ref_lat = paddle.ones([1, 2, 3, 2, 2])
    noise = paddle.full([1, 2, 3, 2, 2], -5.0)
    m = paddle.to_tensor([[1.0, 0.0, 0.5]])
    z, x_mask = s.apply_frame_mask(ref_lat, ref_lat, m, s.timesteps[0], noise=noise)
    np.testing.assert_array_equal(z.numpy()[0, :, 0], -5.0)
    np.testing.assert_array_equal(z.numpy()[0, :, 1:], 1.0)
    np.testing.assert_array_equal(x_mask.numpy(), [[True, False, False]])
    # the 0.5 frame is noised once, at the first step with t <= 500: t = 500 (index 2)
    fm = [frame_mask_at_step(m, s.timesteps, i, 1000) for i in range(4)]
    np.testing.assert_array_equal([bool(f.renoise.numpy()[0, 2]) for f in fm], [False, False, True, False])
    z2, _ = s.apply_frame_mask(ref_lat, ref_lat, m, s.timesteps[2], noise=noise)
    close(z2.numpy()[0, :, 2], s.add_noise(ref_lat, noise, 500.0).numpy()[0, :, 2], atol=0, rtol=0)
    with pytest.raises(ValueError, match="edit_ratio"):
        s.apply_frame_mask(ref_lat, ref_lat, paddle.to_tensor([[1.0, 2.0, 0.0]]), s.timesteps[0])


# ---------------------------------------------------------------------------------------------
# the tiny STDiT3 run (needs the model port)
# ---------------------------------------------------------------------------------------------
from models.stdit.checkpoint import load_upstream_state_dict as LOAD_UPSTREAM  # noqa: E402
from models.stdit.stdit3 import STDiT3 as STDIT3  # noqa: E402


def test_rflow_tiny_stdit3_sampling(ref, fixtures_dir):
    """Upstream RFLOW(num_sampling_steps=10, cfg_scale=7, use_timestep_transform=True).sample with the
    tiny STDiT3, written as the pipeline loop."""
    npz, meta = ref
    run = meta["stdit3_sample"]
    with open(os.path.join(fixtures_dir, "opensora_ref", "stdit3_v1.2.0.json")) as f:
        config = json.load(f)["config_kwargs"]
    state = LOAD_UPSTREAM(os.path.join(fixtures_dir, "opensora_ref", "stdit3_v1.2.0_tiny_weights.safetensors"))
    model = STDIT3.from_upstream(config, state)
    model.eval()

    args = run["additional_args"]
    s = RFlow(num_sampling_steps=10, cfg_scale=7.0, use_timestep_transform=True)
    s.set_timesteps(height=args["height"][0], width=args["width"][0], num_frames=args["num_frames"][0])
    close(s.timesteps, npz["stdit3_sample.timesteps"][:, 0], atol=0, rtol=0)

    z = paddle.to_tensor(npz["stdit3_sample.z"])
    B = z.shape[0]
    assert list(z.shape) == run["z_shape"]
    y = paddle.concat([paddle.to_tensor(npz["stdit3_sample.y"]), model.null_caption(B)])  # [2B, 1, L, C]
    mask = paddle.to_tensor(npz["stdit3_sample.mask"]).tile([2, 1])  # upstream repeats it in the model
    cond_args = {k: paddle.full([2 * B], v[0], "float32") for k, v in args.items()}
    with paddle.no_grad():
        for t in s.timesteps:
            out = model(paddle.concat([z, z]), paddle.full([2 * B], float(t), "float32"), y, mask=mask, **cond_args)
            cond, uncond = out.chunk(2, axis=0)
            z = s.step(s.guidance(cond, uncond), t, z)
    # measured max abs diff 1.1e-5 on |z| <= 9 (ten model calls with guidance scale 7)
    close(z, npz["stdit3_sample.z_final"], atol=5e-5, rtol=5e-5)


def test_build_scheduler_from_upstream_config():
    from schedulers import build_scheduler

    s = build_scheduler({"type": "rflow", "use_timestep_transform": True, "num_sampling_steps": 30, "cfg_scale": 7.0})
    assert isinstance(s, RFlow) and s.num_sampling_steps == 30 and s.use_timestep_transform
    with pytest.raises(ValueError, match="accepted"):
        build_scheduler({"type": "rflow", "use_timestep_transfrom": True})
