"""Embedding layers of the STDiT models: patches, timesteps, sizes, captions, 2-D positions, RoPE.

Parameter and buffer names follow upstream Open-Sora (`opensora/models/layers/blocks.py` and
`rotary_embedding_torch.RotaryEmbedding`) so that upstream `state_dict` keys map one to one.
"""
import functools
import math

import numpy as np
import paddle
import paddle.nn as nn
import paddle.nn.functional as F
from einops import rearrange

from .blocks import Mlp, approx_gelu


class PatchEmbed3D(nn.Layer):
    """Video latent to patch tokens: right-pad to a multiple of the patch, Conv3D with stride = patch.

    Args:
        patch_size: (pt, ph, pw) in latent frames / latent pixels.
        in_chans: latent channels C_in.
        embed_dim: hidden size C.

    Input [B, C_in, T, H, W] -> tokens [B, N, C] with N = ceil(T/pt) * ceil(H/ph) * ceil(W/pw),
    ordered (t, h, w). Follows Open-Sora v1.1 `PatchEmbed3D` (no norm layer).
    """

    def __init__(self, patch_size=(1, 2, 2), in_chans=4, embed_dim=96):
        super().__init__()
        self.patch_size = tuple(int(p) for p in patch_size)
        self.in_chans = in_chans
        self.embed_dim = embed_dim
        self.proj = nn.Conv3D(in_chans, embed_dim, kernel_size=self.patch_size, stride=self.patch_size)

    def forward(self, x):
        _, _, T, H, W = x.shape
        pt, ph, pw = self.patch_size
        pad = [0, (-W) % pw, 0, (-H) % ph, 0, (-T) % pt]  # [w_l, w_r, h_t, h_b, t_f, t_b]
        if any(pad):
            x = F.pad(x, pad, data_format="NCDHW")
        x = self.proj(x)  # [B, C, T', H', W']
        return rearrange(x, "B C T H W -> B (T H W) C")


def sinusoidal_embedding(t, dim, max_period=10000):
    """GLIDE sinusoidal embedding `[cos(t f), sin(t f)]`.

    Args:
        t: [N] float (timesteps, sizes, frame counts...; fractional allowed).
        dim: output width D.

    Returns:
        [N, D] float32.
    """
    half = dim // 2
    freqs = paddle.exp(-math.log(max_period) * paddle.arange(0, half, dtype="float32") / half)
    args = t.astype("float32")[:, None] * freqs[None]
    emb = paddle.concat([paddle.cos(args), paddle.sin(args)], axis=-1)
    if dim % 2:
        emb = paddle.concat([emb, paddle.zeros_like(emb[:, :1])], axis=-1)
    return emb


class TimestepEmbedder(nn.Layer):
    """Scalar timestep [B] -> [B, C] through a sinusoidal code and `mlp` (Linear, SiLU, Linear).

    Follows Open-Sora v1.1 `TimestepEmbedder` (key names `mlp.0`, `mlp.2`).
    """

    def __init__(self, hidden_size, frequency_embedding_size=256):
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(frequency_embedding_size, hidden_size),
            nn.Silu(),
            nn.Linear(hidden_size, hidden_size),
        )
        self.frequency_embedding_size = frequency_embedding_size

    def forward(self, t, dtype="float32"):
        """t: [B] float -> [B, C] of `dtype`."""
        t_freq = sinusoidal_embedding(t, self.frequency_embedding_size).astype(dtype)
        return self.mlp(t_freq)


class SizeEmbedder(TimestepEmbedder):
    """Embeds D scalar sizes per sample (height/width, aspect ratio, frames, fps) into [B, D*C].

    `forward(s, bs)`: s is [B] or [B, D] (or [1, D], repeated to bs rows). Follows Open-Sora v1.1
    `SizeEmbedder`.
    """

    def __init__(self, hidden_size, frequency_embedding_size=256):
        super().__init__(hidden_size, frequency_embedding_size)
        self.outdim = hidden_size

    def forward(self, s, bs):
        if s.ndim == 1:
            s = s[:, None]
        if s.ndim != 2:
            raise ValueError(f"size conditioning must be [B] or [B, D], got shape {list(s.shape)}")
        if s.shape[0] != bs:
            if bs % s.shape[0] != 0:
                raise ValueError(f"size conditioning has {s.shape[0]} rows, which does not divide batch {bs}")
            s = s.tile([bs // s.shape[0], 1])
        b, d = s.shape
        s_freq = sinusoidal_embedding(s.reshape([-1]), self.frequency_embedding_size)  # [(b d), F]
        s_freq = s_freq.astype(self.mlp[0].weight.dtype)
        s_emb = self.mlp(s_freq)  # [(b d), C]
        return s_emb.reshape([b, d * self.outdim])


class CaptionEmbedder(nn.Layer):
    """Projects text-encoder states [B, 1, L, C_txt] to [B, 1, L, C]; holds the null caption.

    The buffer `y_embedding` [token_num, C_txt] is the learned "empty prompt" used for caption
    dropout in training and as the unconditional input of classifier-free guidance.

    Follows Open-Sora v1.1 `CaptionEmbedder` (keys `y_proj.fc1`, `y_proj.fc2`, `y_embedding`).
    """

    def __init__(self, in_channels, hidden_size, uncond_prob, act_layer=approx_gelu, token_num=120):
        super().__init__()
        self.y_proj = Mlp(in_channels, hidden_features=hidden_size, out_features=hidden_size, act_layer=act_layer)
        self.register_buffer(
            "y_embedding", paddle.randn([token_num, in_channels]) / in_channels**0.5, persistable=True
        )
        self.uncond_prob = uncond_prob

    def null_caption(self, batch_size):
        """The unconditional caption [batch_size, 1, token_num, C_txt] for guidance."""
        return self.y_embedding[None, None].expand([batch_size, 1] + list(self.y_embedding.shape))

    def token_drop(self, caption, force_drop_ids=None):
        """Replace whole captions by the null caption: randomly (p = uncond_prob) or where
        `force_drop_ids` [B] is 1. caption: [B, 1, L, C_txt] with L == token_num."""
        if tuple(caption.shape[2:]) != tuple(self.y_embedding.shape):
            raise ValueError(
                f"caption dropout needs captions of shape [B, 1, {self.y_embedding.shape[0]}, "
                f"{self.y_embedding.shape[1]}] (model_max_length tokens), got {list(caption.shape)}"
            )
        if force_drop_ids is None:
            drop_ids = paddle.rand([caption.shape[0]]) < self.uncond_prob
        else:
            drop_ids = paddle.to_tensor(force_drop_ids).astype("int64") == 1
        return paddle.where(drop_ids[:, None, None, None], self.y_embedding.astype(caption.dtype), caption)

    def forward(self, caption, train, force_drop_ids=None):
        if (train and self.uncond_prob > 0) or force_drop_ids is not None:
            caption = self.token_drop(caption, force_drop_ids)
        return self.y_proj(caption)


@functools.lru_cache(maxsize=256)
def _pos_embed_2d(dim, h, w, scale, base_size):
    """Numpy float32 table [h*w, dim]: first half encodes the column (w) index, second the row."""
    half_dim = dim // 2
    inv_freq = (1.0 / (10000 ** (np.arange(0, half_dim, 2, dtype=np.float32) / np.float32(half_dim)))).astype(
        np.float32
    )
    grid_h = np.arange(h, dtype=np.float32) / np.float32(scale)
    grid_w = np.arange(w, dtype=np.float32) / np.float32(scale)
    if base_size is not None:
        grid_h = grid_h * np.float32(base_size / h)
        grid_w = grid_w * np.float32(base_size / w)
    # upstream's meshgrid puts w first: the first half of the channels encodes the column index
    col = np.broadcast_to(grid_w[None, :], (h, w)).reshape(-1)
    row = np.broadcast_to(grid_h[:, None], (h, w)).reshape(-1)

    def sin_cos(t):
        out = np.einsum("i,d->id", t, inv_freq).astype(np.float32)
        return np.concatenate([np.sin(out), np.cos(out)], axis=-1)

    return np.concatenate([sin_cos(col), sin_cos(row)], axis=-1).astype(np.float32)


class PositionEmbedding2D(nn.Layer):
    """2-D sin-cos position embedding of the spatial patch grid, scaled for resolution.

    `forward(h, w, scale, base_size)` -> [1, h*w, dim] float32. Positions are `index / scale`,
    stretched by `base_size / h` and `base_size / w`; `scale` is sqrt(H_px * W_px) / input_sq_size.
    Follows Open-Sora v1.1 `PositionEmbedding2D` (the same table, computed in float32 and cached).
    """

    def __init__(self, dim):
        super().__init__()
        if dim % 4 != 0:
            raise ValueError(f"hidden_size must be divisible by 4 for the 2-D position embedding, got {dim}")
        self.dim = dim

    def forward(self, h, w, scale=1.0, base_size=None):
        table = _pos_embed_2d(self.dim, int(h), int(w), float(scale), base_size)
        return paddle.to_tensor(table)[None]


class RotaryEmbedding(nn.Layer):
    """Rotary position embedding over a sequence axis, interleaved pairs (RoFormer style).

    The persistable buffer `freqs` [dim/2] = 1 / 10000^(2i/dim) matches the key `rope.freqs` of
    upstream checkpoints (`rotary_embedding_torch.RotaryEmbedding(dim)`); it is a fixed table.
    """

    def __init__(self, dim, theta=10000.0):
        super().__init__()
        self.dim = dim
        freqs = 1.0 / (theta ** (paddle.arange(0, dim, 2, dtype="float32")[: dim // 2] / dim))
        self.register_buffer("freqs", freqs, persistable=True)

    def rotate_queries_or_keys(self, x, seq_axis=-2):
        """Rotate x by position along `seq_axis`.

        Args:
            x: [..., N, D] (seq_axis=-2, the heads-first layout of the attention layers), D == dim.

        Returns:
            the same shape and dtype: pairs (x[2i], x[2i+1]) rotated by angle pos * freqs[i].
        """
        n = x.shape[seq_axis]
        pos = paddle.arange(n, dtype="float32")
        angles = paddle.repeat_interleave(pos[:, None] * self.freqs[None, :], 2, axis=-1)  # [N, D]: f0 f0 f1 f1 ..
        sign = paddle.to_tensor([-1.0, 1.0] * (self.dim // 2), dtype="float32")  # rotated = (-x1, x0) per pair
        shape = [1] * x.ndim
        shape[seq_axis] = n
        shape[-1] = self.dim
        cos = paddle.cos(angles).reshape(shape).astype(x.dtype).expand(x.shape)
        sin = (paddle.sin(angles) * sign).reshape(shape).astype(x.dtype).expand(x.shape)
        pairs = x.reshape(list(x.shape[:-1]) + [self.dim // 2, 2])
        swapped = paddle.stack([pairs[..., 1], pairs[..., 0]], axis=-1).reshape(x.shape)  # (x1, x0) per pair
        return x * cos + swapped * sin
