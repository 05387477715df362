"""Input handling shared by STDiT2 and STDiT3: validation, conditioning scalars, text packing."""
import paddle


def dynamic_size(shape, patch_size):
    """Token grid (T, H, W) of a latent [B, C, T, H, W] after right-padding to the patch size."""
    _, _, T, H, W = shape
    pt, ph, pw = patch_size
    return (-(-T // pt), -(-H // ph), -(-W // pw))


def check_latent(x, in_channels, name):
    """Raise ValueError unless x is [B, in_channels, T, H, W] with T, H, W >= 1."""
    if x.ndim != 5 or x.shape[1] != in_channels or min(x.shape[2:]) < 1:
        raise ValueError(
            f"{name}: latent x must have shape [B, {in_channels}, T, H, W] (T, H, W >= 1), got {list(x.shape)}"
        )


def check_caption(y, mask, batch, caption_channels, name):
    """Validate y [B, 1, L, caption_channels] and mask [B, L] (or [b, L] with b dividing B)."""
    if y.ndim != 4 or y.shape[1] != 1 or y.shape[3] != caption_channels:
        raise ValueError(
            f"{name}: text embedding y must have shape [B, 1, L, {caption_channels}] "
            f"(caption_channels={caption_channels}), got {list(y.shape)}"
        )
    if y.shape[0] != batch:
        raise ValueError(f"{name}: y has batch {y.shape[0]} but x has batch {batch}")
    if mask is not None:
        if mask.ndim != 2 or mask.shape[1] != y.shape[2] or batch % mask.shape[0] != 0:
            raise ValueError(
                f"{name}: text mask must have shape [B, L] = [{batch}, {y.shape[2]}], got {list(mask.shape)}"
            )


def as_condition(value, batch, name, model_name):
    """A per-sample scalar condition (height, width, ar, num_frames, fps) as a float32 [b] tensor.

    Accepts a number, a list, or a tensor of shape [b] / [b, 1] with b == 1 or b == batch.
    """
    if value is None:
        raise ValueError(f"{model_name}.forward needs `{name}` (a number or a [B] tensor)")
    if not isinstance(value, paddle.Tensor):
        value = paddle.to_tensor(value, dtype="float32")
    value = value.astype("float32").reshape([-1])
    if value.shape[0] not in (1, batch):
        raise ValueError(f"{model_name}: `{name}` must have 1 or {batch} values, got shape {list(value.shape)}")
    return value


def prepare_text_mask(mask, batch):
    """Text mask [b, L] (any dtype, 1 = token) -> bool [B, L]; rows repeated if b divides B.

    Raises ValueError if a caption has no valid token (the attention would be undefined).
    """
    if mask is None:
        return None
    if mask.shape[0] != batch:
        mask = mask.tile([batch // mask.shape[0], 1])
    mask = mask.astype("bool")
    if not bool(mask.any(axis=1).all()):
        raise ValueError("text mask has a caption with no valid token (an all-zero row)")
    return mask
