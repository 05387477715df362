"""What STDiT2 and STDiT3 share: input validation, conditioning scalars, text masks, and the
`STDiTMixin` with unpatchify, the null caption, recompute and config / weights I/O."""
import paddle
from einops import rearrange

from . import checkpoint as ckpt


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


class STDiTMixin:
    """Methods common to STDiT2 and STDiT3 (which set `model_type`, `config_keys`, `config`,
    `patch_size`, `out_channels`, `y_embedder`, `recompute`)."""

    def enable_recompute(self, enabled=True):
        """Gradient checkpointing per block in training (recomputes each block in backward)."""
        self.recompute = bool(enabled)
        return self

    def encode_text(self, y, mask):
        """y [B, 1, L, caption_channels] -> ([B, L, C], bool mask [B, L] or None)."""
        y = self.y_embedder(y, self.training).squeeze(1)  # [B, L, C]
        return y, prepare_text_mask(mask, y.shape[0])

    def unpatchify(self, x, N_t, N_h, N_w, R_t, R_h, R_w):
        """[B, N_t*N_h*N_w, pt*ph*pw*C_out] -> [B, C_out, R_t, R_h, R_w] (padding removed)."""
        T_p, H_p, W_p = self.patch_size
        x = rearrange(
            x,
            "B (N_t N_h N_w) (T_p H_p W_p C_out) -> B C_out (N_t T_p) (N_h H_p) (N_w W_p)",
            N_t=N_t,
            N_h=N_h,
            N_w=N_w,
            T_p=T_p,
            H_p=H_p,
            W_p=W_p,
            C_out=self.out_channels,
        )
        return x[:, :, :R_t, :R_h, :R_w]

    def null_caption(self, batch_size):
        """The learned empty caption [batch_size, 1, model_max_length, caption_channels] (for CFG)."""
        return self.y_embedder.null_caption(batch_size)

    def save_pretrained(self, save_dir, dtype=None):
        """Write `config.json` + `model.safetensors` to `save_dir` (atomically).

        `dtype="float16"` stores the weights in half precision (half the file size; loading casts
        them back to the model's float32). Raises ValueError for another dtype.
        """
        return ckpt.save_folder(self, self.config, save_dir, self.model_type, dtype=dtype)

    @classmethod
    def from_config(cls, config):
        """Build from a config dict (upstream keyword names); unknown keys raise ValueError."""
        config = {k: v for k, v in dict(config).items() if k not in ckpt.HF_CONFIG_BOOKKEEPING}
        unknown = sorted(set(config) - set(cls.config_keys))
        if unknown:
            raise ValueError(f"unknown {cls.model_type} config keys {unknown}; accepted: {list(cls.config_keys)}")
        return cls(**config)

    @classmethod
    def from_pretrained(cls, path, **overrides):
        """Load a folder written by `save_pretrained` or by `scripts/convert_opensora_weights.py`.

        `overrides` replace config entries (e.g. enable_flash_attn=True).
        Raises FileNotFoundError / ValueError (missing or unexpected keys, shape mismatch).
        """
        config, state = ckpt.read_folder(path, cls.model_type)
        config.update(overrides)
        model = cls.from_config(config)
        return ckpt.load_state(model, state, repr(path))

    @classmethod
    def from_upstream(cls, config, upstream_state):
        """Build from an upstream config dict and an upstream (PyTorch-layout) numpy state dict."""
        model = cls.from_config(config)
        return ckpt.load_state(model, ckpt.upstream_to_paddle(model, upstream_state), "upstream state dict")
