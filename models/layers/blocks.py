"""Small building blocks shared by STDiT2 and STDiT3: MLP, drop-path, adaLN helpers, final layer.

Parameter names follow upstream Open-Sora (`opensora/models/layers/blocks.py`, timm `Mlp`) so that a
converted `state_dict` loads key for key.
"""
import paddle
import paddle.nn as nn
import paddle.nn.functional as F
from einops import rearrange


def approx_gelu():
    """GELU with the tanh approximation (upstream `approx_gelu`)."""
    return nn.GELU(approximate=True)


def t2i_modulate(x, shift, scale):
    """adaLN-single modulation: `x * (1 + scale) + shift`.

    Args:
        x: [B, N, C]; shift, scale: [B, 1, C].
    """
    return x * (1 + scale).expand(x.shape) + shift.expand(x.shape)


def norm_modulate(x, shift, scale, epsilon=1e-6):
    """`t2i_modulate(LayerNorm(x), shift, scale)` for a LayerNorm without affine parameters.

    Computed as one affine LayerNorm per sample (weight 1 + scale, bias shift): the same values
    (the affine step is the LayerNorm's own last step), several times faster than normalising and
    then broadcasting two element-wise ops on Paddle's CPU kernels.

    Args:
        x: [B, N, C]; shift, scale: [B, 1, C].

    Returns:
        [B, N, C].
    """
    C = x.shape[-1]
    outs = [
        F.layer_norm(x[b], C, weight=1 + scale[b, 0], bias=shift[b, 0], epsilon=epsilon) for b in range(x.shape[0])
    ]
    return paddle.stack(outs)


def gate(g, h):
    """Per-sample channel gate `g * h`; g: [B, 1, C], h: [B, N, C] -> [B, N, C].

    The gate is expanded explicitly: Paddle's CPU broadcast kernel is several times slower than its
    same-shape element-wise kernel.
    """
    return g.expand(h.shape) * h


def t_mask_select(x_mask, x, masked_x, T, S):
    """Per-frame choice between two token tensors.

    Args:
        x_mask: [B, T] bool; True = take `x` (generated frame), False = take `masked_x`
            (a condition frame, modulated with timestep 0).
        x, masked_x: [B, T*S, C].
        T, S: number of latent frames and of spatial patches per frame.

    Returns:
        [B, T*S, C].

    Follows Open-Sora v1.1 `STDiT2Block.t_mask_select`.
    """
    x = rearrange(x, "B (T S) C -> B T S C", T=T, S=S)
    masked_x = rearrange(masked_x, "B (T S) C -> B T S C", T=T, S=S)
    x = paddle.where(x_mask[:, :, None, None], x, masked_x)
    return rearrange(x, "B T S C -> B (T S) C")


class Mlp(nn.Layer):
    """Two-layer MLP `fc2(act(fc1(x)))` with timm's parameter names (`fc1`, `fc2`).

    Args:
        in_features, hidden_features, out_features: channel sizes (out defaults to in).
        act_layer: a callable returning the activation layer.
    """

    def __init__(self, in_features, hidden_features=None, out_features=None, act_layer=approx_gelu):
        super().__init__()
        hidden_features = hidden_features or in_features
        out_features = out_features or in_features
        self.fc1 = nn.Linear(in_features, hidden_features)
        self.act = act_layer()
        self.fc2 = nn.Linear(hidden_features, out_features)

    def forward(self, x):
        """x: [..., in_features] -> [..., out_features]."""
        return self.fc2(self.act(self.fc1(x)))


class DropPath(nn.Layer):
    """Stochastic depth per sample (identity in eval mode or with `drop_prob == 0`)."""

    def __init__(self, drop_prob=0.0):
        super().__init__()
        self.drop_prob = float(drop_prob)

    def forward(self, x):
        """x: [B, ...] -> same shape; in training each sample's branch is dropped with prob p."""
        if self.drop_prob == 0.0 or not self.training:
            return x
        keep = 1.0 - self.drop_prob
        shape = [x.shape[0]] + [1] * (x.ndim - 1)
        noise = paddle.bernoulli(paddle.full(shape, keep, dtype=x.dtype))
        return x * noise / keep


class T2IFinalLayer(nn.Layer):
    """PixArt-style final layer: LayerNorm, adaLN-single shift/scale, linear to patch pixels.

    Args:
        hidden_size: C.
        num_patch: prod(patch_size).
        out_channels: latent channels produced per patch element (2x in with learned sigma).

    Follows Open-Sora v1.1/v1.2 `T2IFinalLayer` (including the per-frame `x_mask` choice).
    """

    def __init__(self, hidden_size, num_patch, out_channels):
        super().__init__()
        self.linear = nn.Linear(hidden_size, num_patch * out_channels)
        self.scale_shift_table = self.create_parameter(
            [2, hidden_size], default_initializer=nn.initializer.Normal(std=hidden_size**-0.5)
        )
        self.out_channels = out_channels

    def forward(self, x, t, x_mask=None, t0=None, T=None, S=None):
        """
        Args:
            x: [B, N, C] tokens; t: [B, C] timestep embedding; t0: [B, C] timestep-0 embedding,
            required with `x_mask` [B, T] (bool, False = condition frame); T, S: token grid.

        Returns:
            [B, N, num_patch * out_channels].
        """
        shift, scale = (self.scale_shift_table[None] + t[:, None]).chunk(2, axis=1)  # [B, 1, C] each
        x = norm_modulate(x, shift, scale)
        if x_mask is not None:
            shift_zero, scale_zero = (self.scale_shift_table[None] + t0[:, None]).chunk(2, axis=1)
            # Upstream normalises the already-modulated tokens for the condition frames; kept so
            # that released weights give the same output.
            x_zero = norm_modulate(x, shift_zero, scale_zero)
            x = t_mask_select(x_mask, x, x_zero, T, S)
        return self.linear(x)
