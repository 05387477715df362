"""IDDPM scheduler: fidelity to upstream Open-Sora v1.1.0 (fixtures) and masked-sampling behaviour."""
import json
import os

import numpy as np
import paddle
import pytest

from schedulers.iddpm import (
    IDDPM,
    TABLE_NAMES,
    classifier_free_guidance,
    diffusion_tables,
    frame_mask_at_step,
    frame_noise_in_steps,
    get_named_beta_schedule,
    mean_flat,
    space_timesteps,
)

ATOL = RTOL = 1e-5


@pytest.fixture(scope="module")
def ref(fixtures_dir):
    base = os.path.join(fixtures_dir, "opensora_ref", "iddpm_v1.1.0")
    with open(base + ".json") as f:
        meta = json.load(f)
    return dict(np.load(base + ".npz")), meta


def close(actual, expected, atol=ATOL, rtol=RTOL):
    actual = actual.numpy() if isinstance(actual, paddle.Tensor) else np.asarray(actual)
    expected = np.asarray(expected)
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    np.testing.assert_allclose(actual.astype(np.float64), expected.astype(np.float64), atol=atol, rtol=rtol)


def make_dummy(npz):
    """The fixture's stand-in model (formula in iddpm_v1.1.0.json `dummy_model`); records timesteps."""
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


# ---------------------------------------------------------------------------------------------
# tables and respacing
# ---------------------------------------------------------------------------------------------
def test_linear_betas_and_float64_tables(ref):
    npz, meta = ref
    betas = get_named_beta_schedule("linear", 1000)
    assert betas.dtype == np.float64
    close(betas, npz["raw_linear1000.betas"], atol=0, rtol=0)
    tables = diffusion_tables(betas)
    assert set(tables) == set(TABLE_NAMES) == set(meta["gaussian1000_f64"]["table_dtypes"])
    for name in TABLE_NAMES:
        assert tables[name].dtype == np.float64
        close(tables[name], npz[f"gaussian1000_f64.{name}"], atol=1e-12, rtol=1e-12)


@pytest.mark.parametrize("prefix,kwargs", [("base1000", {}), ("respaced100", {"num_sampling_steps": 100})])
def test_iddpm_tables_are_float32_as_upstream(ref, prefix, kwargs):
    npz, meta = ref
    s = IDDPM(**kwargs)
    assert s.num_timesteps == meta[prefix]["num_timesteps"]
    for name in TABLE_NAMES:
        table = getattr(s, name)
        assert table.dtype == np.float32, name
        close(table, npz[f"{prefix}.{name}"])
    np.testing.assert_array_equal(s.timestep_map, npz[f"{prefix}.timestep_map"])
    # the sampling order: model-scale values, noisiest first
    np.testing.assert_array_equal(s.timesteps.numpy(), npz[f"{prefix}.timestep_map"][::-1])


def test_respacing_equivalent_spellings(ref):
    npz, _ = ref
    a = IDDPM(num_sampling_steps=100)
    b = IDDPM(timestep_respacing="100")
    c = IDDPM()
    c.set_timesteps(100)
    for s in (b, c):
        np.testing.assert_array_equal(s.timestep_map, a.timestep_map)
        np.testing.assert_array_equal(s.betas, a.betas)
    c.set_timesteps(timestep_respacing="ddim50")
    assert c.num_timesteps == 50 and c.timestep_map[1] == 20
    # "" = no respacing, as the v1.1 training config writes it
    np.testing.assert_array_equal(IDDPM(timestep_respacing="").betas, npz["base1000.betas"])


def test_space_timesteps_matches_upstream(ref):
    _, meta = ref
    assert len(meta["space_timesteps"]) >= 10
    for key, expect in meta["space_timesteps"].items():
        n, counts = key.split("|")
        counts = json.loads(counts) if counts.startswith("[") else counts
        if "exception" in expect:
            with pytest.raises(ValueError, match=expect["message"]):
                space_timesteps(int(n), counts)
        else:
            assert space_timesteps(int(n), counts) == expect["result"], key


@pytest.mark.parametrize("bad", ["ddimx", "ddim3000", "10,a", "", "0", [5, 0]])
def test_space_timesteps_rejects_bad_input(bad):
    with pytest.raises(ValueError):
        space_timesteps(1000, bad)


def test_constructor_rejects_bad_input():
    with pytest.raises(ValueError, match="not both"):
        IDDPM(num_sampling_steps=10, timestep_respacing="20")
    with pytest.raises(ValueError, match="noise_schedule"):
        IDDPM(noise_schedule="quadratic")
    with pytest.raises(ValueError, match="num_sampling_steps"):
        IDDPM(num_sampling_steps=0)
    with pytest.raises(ValueError, match="cfg_channel"):
        IDDPM(cfg_channel=0)


def test_cosine_schedule_is_usable():
    betas = get_named_beta_schedule("squaredcos_cap_v2", 1000)
    assert betas.shape == (1000,) and 0 < betas.min() and betas.max() <= 0.999
    assert np.all(np.diff(betas[:-1]) > 0)
    IDDPM(noise_schedule="squaredcos_cap_v2", num_sampling_steps=10)


# ---------------------------------------------------------------------------------------------
# forward process, losses, reverse process, guidance
# ---------------------------------------------------------------------------------------------
def test_q_sample_add_noise_and_q_mean_variance(ref):
    npz, _ = ref
    s = IDDPM()
    x0 = paddle.to_tensor(npz["q_sample.x_start"])
    noise = paddle.to_tensor(npz["q_sample.noise"])
    t = paddle.to_tensor(npz["q_sample.t"])
    close(s.q_sample(x0, t, noise), npz["q_sample.out"])
    close(s.add_noise(x0, noise, t), npz["q_sample.out"])
    for name, value in zip(("mean", "variance", "log_variance"), s.q_mean_variance(x0, t)):
        close(value, npz[f"q_mean_variance.{name}"])


def test_add_noise_uses_model_scale_timesteps(ref):
    npz, _ = ref
    s = IDDPM(num_sampling_steps=100)
    x0 = paddle.to_tensor(npz["q_sample.x_start"])
    noise = paddle.to_tensor(npz["q_sample.noise"])
    # value 505 is respaced index 50
    close(s.add_noise(x0, noise, 505), s.q_sample(x0, paddle.full([4], 50, "int64"), noise), atol=0, rtol=0)
    with pytest.raises(ValueError, match="504"):
        s.add_noise(x0, noise, 504)


@pytest.mark.parametrize("variant", ["nomask", "mask"])
def test_training_losses_match_upstream(ref, variant):
    npz, meta = ref
    s = IDDPM(timestep_respacing="")
    model = make_dummy(npz)
    mask = paddle.to_tensor(npz["training.mask"]) if variant == "mask" else None
    terms = s.training_losses(
        model,
        paddle.to_tensor(npz["q_sample.x_start"]),
        paddle.to_tensor(npz["q_sample.t"]),
        model_kwargs={"y": paddle.to_tensor(npz["training.y"])},
        noise=paddle.to_tensor(npz["q_sample.noise"]),
        mask=mask,
    )
    assert set(terms) == {"loss", "mse", "vb"}
    for key in ("loss", "mse", "vb"):
        assert terms[key].shape == [4]
        close(terms[key], npz[f"training.{variant}.{key}"])
    np.testing.assert_array_equal(model.seen[0], npz["q_sample.t"])


def test_training_losses_samples_t_and_checks_input(ref):
    npz, _ = ref
    s = IDDPM()
    model = make_dummy(npz)
    x0 = paddle.to_tensor(npz["q_sample.x_start"])
    paddle.seed(0)
    terms = s.training_losses(model, x0, model_kwargs={"y": paddle.to_tensor(npz["training.y"])})
    assert np.isfinite(terms["loss"].numpy()).all()
    assert ((model.seen[0] >= 0) & (model.seen[0] < 1000)).all()
    with pytest.raises(ValueError, match="mask"):
        s.training_losses(model, x0, paddle.zeros([4], "int64"), mask=paddle.ones([4, 3], "bool"))
    with pytest.raises(ValueError, match="indices"):
        s.training_losses(model, x0, paddle.full([4], 1000, "int64"))
    with pytest.raises(ValueError, match="use_kl"):
        IDDPM(use_kl=True).training_losses(model, x0, paddle.zeros([4], "int64"), mask=paddle.ones([4, 4], "bool"))


def test_training_loss_gradient_reaches_only_variance_through_vb(ref):
    npz, _ = ref
    s = IDDPM()
    x0 = paddle.to_tensor(npz["q_sample.x_start"])
    out = paddle.to_tensor(np.zeros([4, 8, 4, 8, 8], np.float32), stop_gradient=False)
    terms = s.training_losses(lambda x, t, **k: out * 1.0, x0, paddle.to_tensor(npz["q_sample.t"]),
                              noise=paddle.to_tensor(npz["q_sample.noise"]))
    terms["vb"].sum().backward()
    grad = out.grad.numpy()
    assert np.abs(grad[:, :4]).max() == 0 and np.abs(grad[:, 4:]).max() > 0


def test_mean_flat_with_mask():
    x = paddle.arange(2 * 1 * 3 * 1 * 2, dtype="float32").reshape([2, 1, 3, 1, 2])
    mask = paddle.to_tensor([[True, False, True], [False, False, False]])
    out = mean_flat(x, mask).numpy()
    assert out[0] == pytest.approx((0 + 1 + 4 + 5) / 4)
    assert out[1] == 0.0  # no generated frame: zero loss instead of upstream's NaN
    with pytest.raises(ValueError, match=r"\[B, T\]"):
        mean_flat(x, paddle.ones([2, 2], "bool"))


def test_p_mean_variance_respaced_matches_upstream(ref):
    npz, _ = ref
    s = IDDPM(num_sampling_steps=100)
    model = make_dummy(npz)
    x_t = paddle.to_tensor(npz["p_mean_variance.x_t"])
    t = paddle.to_tensor(npz["p_mean_variance.t"])
    kwargs = {"y": paddle.to_tensor(npz["training.y"])}
    out = s.p_mean_variance(model, x_t, t, clip_denoised=False, model_kwargs=kwargs)
    for key in ("mean", "variance", "log_variance", "pred_xstart"):
        close(out[key], npz[f"p_mean_variance.{key}"])
    np.testing.assert_array_equal(model.seen[0], npz["p_mean_variance.model_timestep"])
    clipped = s.p_mean_variance(model, x_t, t, clip_denoised=True, model_kwargs=kwargs)
    close(clipped["mean"], npz["p_mean_variance.clip.mean"])
    close(clipped["pred_xstart"], npz["p_mean_variance.clip.pred_xstart"])


@pytest.mark.parametrize("cfg_channel", [None, 3])
def test_guidance_matches_forward_with_cfg(ref, cfg_channel):
    npz, _ = ref
    model = make_dummy(npz)
    x = paddle.to_tensor(npz["forward_with_cfg.x"])
    half = x[: x.shape[0] // 2]
    out = model(paddle.concat([half, half]), paddle.to_tensor(npz["forward_with_cfg.t"]),
                paddle.to_tensor(npz["forward_with_cfg.y"]))
    cond, uncond = out.chunk(2, axis=0)
    expected = npz[f"forward_with_cfg.cfg7_channel{cfg_channel}"]  # [2B, 2C]: both halves

    s = IDDPM(cfg_scale=7.0, cfg_channel=cfg_channel)
    guided = s.guidance(cond, uncond)
    close(guided, expected[:2])
    n = 4 if cfg_channel is None else cfg_channel
    close(guided[:, :n], expected[2:, :n])  # upstream repeats the guided eps in the second half
    close(uncond[:, n:], expected[2:, n:])
    # explicit arguments override the defaults
    close(IDDPM().guidance(cond, uncond, 7.0, cfg_channel), expected[:2])


def test_guidance_rejects_bad_input():
    a = paddle.zeros([1, 8, 2, 2, 2])
    with pytest.raises(ValueError, match="cfg_channel"):
        classifier_free_guidance(a, a, 7.0, 9)
    with pytest.raises(ValueError, match="shape"):
        classifier_free_guidance(a, paddle.zeros([1, 4, 2, 2, 2]), 7.0)


def test_step_is_ancestral_p_sample(ref):
    npz, _ = ref
    s = IDDPM(num_sampling_steps=100)
    model = make_dummy(npz)
    x = paddle.to_tensor(npz["p_mean_variance.x_t"])
    y = paddle.to_tensor(npz["training.y"])
    noise = paddle.to_tensor(npz["q_sample.noise"])
    for t_value, index in ((505, 50), (0, 0)):
        out = model(x, paddle.full([4], t_value, "int64"), y=y)
        prev = s.step(out, t_value, x, noise=noise)
        mv = s.p_mean_variance(model, x, paddle.full([4], index, "int64"), clip_denoised=False, model_kwargs={"y": y})
        expected = mv["mean"] if index == 0 else mv["mean"] + paddle.exp(0.5 * mv["log_variance"]) * noise
        close(prev, expected, atol=0, rtol=0)
    # t given as a [B] tensor of equal entries works; unknown or mixed timesteps do not
    close(s.step(out, paddle.full([4], 0, "int64"), x), s.step(out, 0, x), atol=0, rtol=0)
    with pytest.raises(ValueError, match="not one of"):
        s.step(out, 3, x)
    with pytest.raises(ValueError, match="one timestep"):
        s.step(out, paddle.to_tensor([0, 10, 0, 0]), x)
    with pytest.raises(ValueError, match="model_output"):
        s.step(out[:, :4], 0, x)


def test_sampling_loop_with_guidance_is_deterministic_given_noise(ref):
    npz, _ = ref
    s = IDDPM(num_sampling_steps=5, cfg_scale=7.0, cfg_channel=3)
    model = make_dummy(npz)
    z0 = paddle.to_tensor(npz["q_sample.noise"][:2])
    y = paddle.to_tensor(npz["forward_with_cfg.y"])
    rng = np.random.default_rng(0)
    noises = [paddle.to_tensor(rng.standard_normal(z0.shape).astype(np.float32)) for _ in range(5)]

    def run():
        z = z0
        for i, t in enumerate(s.timesteps):
            out = model(paddle.concat([z, z]), paddle.full([4], int(t), "int64"), y=y)
            cond, uncond = out.chunk(2)
            z = s.step(s.guidance(cond, uncond), t, z, noise=noises[i])
        return z

    a, b = run(), run()
    close(a, b, atol=0, rtol=0)
    assert [int(v[0]) for v in model.seen[:5]] == [999, 749, 500, 250, 0]


def test_fixed_variance_and_xstart_variants(ref):
    npz, _ = ref
    x = paddle.to_tensor(npz["q_sample.x_start"])
    t = paddle.to_tensor(npz["q_sample.t"])
    for kwargs in ({"learn_sigma": False}, {"learn_sigma": False, "sigma_small": True}, {"predict_xstart": True}):
        s = IDDPM(**kwargs)
        c_out = 8 if kwargs.get("learn_sigma", True) else 4
        out = s.mean_variance_from_output(paddle.zeros([4, c_out, 4, 8, 8]), x, t)
        assert all(v.shape == [4, 4, 4, 8, 8] for v in out.values())
        terms = s.training_losses(lambda xt, tt, **k: paddle.zeros([4, c_out, 4, 8, 8]), x, t)
        assert np.isfinite(terms["loss"].numpy()).all()
    with pytest.raises(ValueError, match="model_output"):
        IDDPM(learn_sigma=False).mean_variance_from_output(paddle.zeros([4, 8, 4, 8, 8]), x, t)


# ---------------------------------------------------------------------------------------------
# masked sampling (SPEC §4)
# ---------------------------------------------------------------------------------------------
def test_frame_noise_in_steps():
    m = paddle.to_tensor([[0.0, 0.4, 1.0, 0.7, 0.005]])
    np.testing.assert_array_equal(frame_noise_in_steps(m, 100).numpy(), [[-1, 40, 100, 70, 0]])
    np.testing.assert_array_equal(frame_noise_in_steps(m, 10).numpy(), [[-1, 4, 10, 7, 0]])
    for bad in ([[1.5]], [[-0.1]], [[np.nan]], [0.5, 0.5]):
        with pytest.raises(ValueError, match="edit_ratio"):
            frame_noise_in_steps(paddle.to_tensor(np.array(bad, np.float32)), 10)


def test_frame_mask_states_over_a_run():
    m = paddle.to_tensor([[0.0, 0.4, 1.0]])
    N = 10  # noise-in steps: never, index 4, from the start
    rows = [frame_mask_at_step(m, i, N) for i in range(N)]
    x_mask = np.array([r.x_mask.numpy()[0] for r in rows])
    renoise = np.array([r.renoise.numpy()[0] for r in rows])
    # loop index i visits respaced index t = 9 - i; 0.4 -> k = 4 -> i = 5
    np.testing.assert_array_equal(x_mask[:, 0], [False] * 10)
    np.testing.assert_array_equal(x_mask[:, 1], [False] * 5 + [True] * 5)
    np.testing.assert_array_equal(x_mask[:, 2], [True] * 10)
    np.testing.assert_array_equal(renoise[:, 0], [False] * 10)
    np.testing.assert_array_equal(np.nonzero(renoise[:, 1])[0], [5])
    np.testing.assert_array_equal(np.nonzero(renoise[:, 2])[0], [0])
    for r in rows:
        np.testing.assert_array_equal(r.held.numpy(), ~r.x_mask.numpy())
    with pytest.raises(ValueError, match="step_index"):
        frame_mask_at_step(m, 10, N)


def _upstream_masked_loop(s, model, z, mask, noises_in, noises_step, y):
    """Upstream v1.1 p_sample(mask=...) semantics, written out independently for comparison."""
    N = s.num_timesteps
    k = (mask * N).astype("int32")
    for i in range(N):
        t = N - 1 - i
        tt = paddle.full([z.shape[0]], t, "int64")
        x0 = z
        x_noise = s.q_sample(x0, tt, noises_in[i])
        eq = (k == t).unsqueeze(1).unsqueeze(-1).unsqueeze(-1).expand(z.shape)
        z = paddle.where(eq, x_noise, x0)
        out = s.p_mean_variance(model, z, tt, clip_denoised=False, model_kwargs={"y": y})
        sample = out["mean"] + (1.0 if t != 0 else 0.0) * paddle.exp(0.5 * out["log_variance"]) * noises_step[i]
        lower = (k < t).unsqueeze(1).unsqueeze(-1).unsqueeze(-1).expand(z.shape)
        z = paddle.where(lower, x0, sample)
    return z


def test_masked_sampling_matches_upstream_and_fixes_edges(ref):
    npz, _ = ref
    N = 10
    s = IDDPM(num_sampling_steps=N)
    model = make_dummy(npz)
    rng = np.random.default_rng(1)
    shape = [2, 4, 5, 4, 4]
    reference = paddle.to_tensor(rng.standard_normal(shape).astype(np.float32))
    init_noise = paddle.to_tensor(rng.standard_normal(shape).astype(np.float32))
    noises_in = [paddle.to_tensor(rng.standard_normal(shape).astype(np.float32)) for _ in range(N)]
    noises_step = [paddle.to_tensor(rng.standard_normal(shape).astype(np.float32)) for _ in range(N)]
    noises_in[0] = init_noise  # edit-ratio-1 frames take the step-0 noise = the initial noise
    y = paddle.to_tensor(npz["training.y"][:2])
    m = paddle.to_tensor([[0.0, 0.4, 1.0, 0.75, 0.05], [1.0, 1.0, 0.0, 0.2, 0.99]])
    gen = (m >= 1).unsqueeze(1).unsqueeze(-1).unsqueeze(-1).expand(shape)
    z_start = paddle.where(gen, init_noise, reference)  # what a pipeline builds

    z = z_start
    x_masks = []
    for i, t in enumerate(s.timesteps):
        z, x_mask = s.apply_frame_mask(z, reference, m, t, noise=noises_in[i])
        x_masks.append(x_mask.numpy())
        if i == 0:  # edit ratio 1 frames are pure noise from the start
            close(z.numpy()[0, :, 2], init_noise.numpy()[0, :, 2], atol=0, rtol=0)
        out = model(z, paddle.full([2], int(t), "int64"), y=y)
        z = s.step(out, t, z, noise=noises_step[i])
        z = s.restore_held_frames(z, reference, m, t)

    upstream = _upstream_masked_loop(s, model, z_start, m, noises_in, noises_step, y).numpy()
    mine, ref_np = z.numpy(), reference.numpy()
    for b in range(2):
        for f in range(5):
            r = float(m.numpy()[b, f])
            if r == 0:
                np.testing.assert_array_equal(mine[b, :, f], ref_np[b, :, f])  # FIX: exactly the reference
                assert np.abs(upstream[b, :, f] - ref_np[b, :, f]).max() > 0  # upstream re-noised it at t=0
            else:
                close(mine[b, :, f], upstream[b, :, f], atol=1e-6, rtol=1e-6)
    # x_mask: False while held, True from the noise-in step on
    x_masks = np.array(x_masks)  # [N, B, T]
    assert not x_masks[:, 0, 0].any() and x_masks[:, 0, 2].all()
    np.testing.assert_array_equal(x_masks[:, 0, 1], [False] * 5 + [True] * 5)  # k = 4 -> i = 5


def test_edit_ratio_one_frames_start_from_noise_even_with_reference_written():
    """hpcaitech issue 695: upstream never noised an edit-ratio-1 frame that held a reference."""
    s = IDDPM(num_sampling_steps=4)
    ref_lat = paddle.ones([1, 2, 3, 2, 2])
    noise = paddle.full([1, 2, 3, 2, 2], -5.0)
    m = paddle.to_tensor([[1.0, 0.0, 0.5]])
    z, x_mask = s.apply_frame_mask(ref_lat, ref_lat, m, s.timesteps[0], noise=noise)
    np.testing.assert_array_equal(z.numpy()[0, :, 0], -5.0)
    np.testing.assert_array_equal(z.numpy()[0, :, 1:], 1.0)
    np.testing.assert_array_equal(x_mask.numpy(), [[True, False, False]])


def test_frame_mask_methods_reject_bad_input():
    s = IDDPM(num_sampling_steps=4)
    z = paddle.zeros([1, 2, 3, 2, 2])
    with pytest.raises(ValueError, match="edit_ratio"):
        s.apply_frame_mask(z, z, paddle.ones([1, 2]), s.timesteps[0])
    with pytest.raises(ValueError, match="reference"):
        s.apply_frame_mask(z, paddle.zeros([1, 2, 2, 2, 2]), paddle.ones([1, 3]), s.timesteps[0])
    with pytest.raises(ValueError, match="not one of"):
        s.restore_held_frames(z, z, paddle.ones([1, 3]), 5)


def test_build_scheduler_from_upstream_config():
    from schedulers import build_scheduler

    s = build_scheduler({"type": "iddpm", "num_sampling_steps": 100, "cfg_scale": 7.0, "cfg_channel": 3})
    assert isinstance(s, IDDPM) and s.num_timesteps == 100 and s.cfg_channel == 3
    with pytest.raises(ValueError, match="accepted"):
        build_scheduler({"type": "iddpm", "num_sampling_step": 100})
    with pytest.raises(ValueError, match="rflow"):
        build_scheduler({"type": "ddim"})
