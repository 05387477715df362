"""Resize a trained STDiT to a smaller patch size (finer token grid), keeping what it learned.

A token of patch p' = p / f on a latent is what the original model saw as a token of patch p on
the same latent upsampled f times (nearest neighbour). Under that reading the new weights follow
exactly (the FlexiViT pseudo-inverse resize, for integer factors):

- patch embedding `x_embedder.proj.weight` [C_hidden, C_in, pt, ph, pw]: each new kernel tap is the
  sum of the f_t x f_h x f_w old taps it replaces (embedding of the upsampled patch);
- final layer `final_layer.linear` [C_hidden, pt*ph*pw*C_out] (+ bias): each new output is the mean
  of the f_t x f_h x f_w old outputs it covers (the prediction downsampled back);
- `input_sq_size` is multiplied by p' / p (spatial), so the 2-D position embedding keeps its unit:
  token positions stay in units of the old patch (a 64 px video: positions 0, 0.5, ..., 3.5 for an
  8x8 grid instead of 0..3 for 4x4).

Every other weight (blocks, timestep / caption embedders) is copied unchanged; the model then
needs fine-tuning at the new patch size (see the README's default-model commands). This is our own
tool, not an upstream Open-Sora one.
"""
import numpy as np

from . import checkpoint as ckpt


def patch_factors(old_patch, new_patch):
    """Integer factors (ft, fh, fw) with old = new * f per axis.

    Raises:
        ValueError: a patch is not three positive ints, or an old size is not a multiple of the new.
    """
    old_patch, new_patch = tuple(old_patch), tuple(new_patch)
    for name, p in (("old", old_patch), ("new", new_patch)):
        if len(p) != 3 or any(int(v) != v or v < 1 for v in p):
            raise ValueError(f"{name} patch_size must be three positive ints (t, h, w), got {list(p)}")
    if any(o % n for o, n in zip(old_patch, new_patch)):
        raise ValueError(
            f"patch_size {list(new_patch)} must divide the model's patch_size {list(old_patch)} on every axis "
            "(only resizing to a finer grid by integer factors is supported)"
        )
    return tuple(int(o // n) for o, n in zip(old_patch, new_patch))


def resize_patch_embed(weight, new_patch):
    """Conv3D kernel [C_hidden, C_in, pt, ph, pw] -> [C_hidden, C_in, *new_patch] by summing old taps."""
    hid, cin, pt, ph, pw = weight.shape
    ft, fh, fw = patch_factors((pt, ph, pw), new_patch)
    nt, nh, nw = new_patch
    w = weight.reshape(hid, cin, nt, ft, nh, fh, nw, fw)
    return w.sum(axis=(3, 5, 7)).astype(weight.dtype)


def resize_final_layer(weight, bias, old_patch, new_patch, out_channels):
    """Final Linear (Paddle layout: weight [C_hidden, pt*ph*pw*C_out], bias [pt*ph*pw*C_out]) of the
    old patch -> the new patch, averaging the old outputs each new output covers.

    The output order is (pt, ph, pw, C_out), the order `STDiTMixin.unpatchify` reads.
    """
    ft, fh, fw = patch_factors(old_patch, new_patch)
    nt, nh, nw = new_patch
    hid = weight.shape[0]
    expected = int(np.prod(old_patch)) * out_channels
    if weight.shape[1] != expected or bias.shape != (expected,):
        raise ValueError(
            f"final layer must have {expected} outputs (patch {list(old_patch)} x {out_channels} channels), "
            f"got weight {list(weight.shape)} and bias {list(bias.shape)}"
        )
    w = weight.reshape(hid, nt, ft, nh, fh, nw, fw, out_channels).mean(axis=(2, 4, 6))
    b = bias.reshape(nt, ft, nh, fh, nw, fw, out_channels).mean(axis=(1, 3, 5))
    return w.reshape(hid, -1).astype(weight.dtype), b.reshape(-1).astype(bias.dtype)


def resize_patch(model, new_patch):
    """A new model of the same class and config with patch_size `new_patch`, weights resized.

    Args:
        model: an STDiT2 / STDiT3 (any patch_size divisible by new_patch per axis).
        new_patch: (pt, ph, pw) ints.

    Returns:
        the new model (eval mode); `config["patch_size"]` and `config["input_sq_size"]` updated.

    Raises:
        ValueError: new_patch does not divide the model's patch_size.
    """
    old_patch = tuple(model.patch_size)
    new_patch = tuple(int(v) for v in new_patch)
    factors = patch_factors(old_patch, new_patch)
    config = dict(model.config)
    config["patch_size"] = list(new_patch)
    if "input_sq_size" in config:
        config["input_sq_size"] = config["input_sq_size"] / (factors[1] * factors[2]) ** 0.5
        if float(config["input_sq_size"]).is_integer():
            config["input_sq_size"] = int(config["input_sq_size"])
    new = type(model).from_config(config)
    state = {k: v.numpy() for k, v in model.state_dict().items()}
    state["x_embedder.proj.weight"] = resize_patch_embed(state["x_embedder.proj.weight"], new_patch)
    w, b = resize_final_layer(
        state["final_layer.linear.weight"], state["final_layer.linear.bias"], old_patch, new_patch, model.out_channels
    )
    state["final_layer.linear.weight"], state["final_layer.linear.bias"] = w, b
    ckpt.load_state(new, state, f"{type(model).__name__} resized to patch {list(new_patch)}")
    new.eval()
    return new
