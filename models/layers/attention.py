"""Self-attention (spatial or temporal, optional qk RMSNorm and RoPE) and text cross-attention.

Parameter names follow upstream Open-Sora (`Attention.qkv/q_norm/k_norm/proj`,
`MultiHeadCrossAttention.q_linear/kv_linear/proj`, `LlamaRMSNorm.weight`).
"""
import paddle
import paddle.nn as nn
import paddle.nn.functional as F


class LlamaRMSNorm(nn.Layer):
    """RMS normalisation over the last axis with a learned gain (`weight`), computed in float32."""

    def __init__(self, hidden_size, eps=1e-6):
        super().__init__()
        self.weight = self.create_parameter([hidden_size], default_initializer=nn.initializer.Constant(1.0))
        self.variance_epsilon = eps

    def forward(self, x):
        """x: [..., D] -> [..., D]."""
        dtype = x.dtype
        h = x.astype("float32")
        inv_rms = paddle.rsqrt((h * h).mean(-1, keepdim=True) + self.variance_epsilon)  # [..., 1]
        # explicit expands: Paddle's CPU broadcast kernels are much slower than same-shape ones
        h = h * inv_rms.expand(h.shape)
        return self.weight.expand(h.shape) * h.astype(dtype)


def _math_attention(q, k, v, attn_mask=None, dropout_p=0.0, training=False):
    """softmax(q k^T / sqrt(D)) v with the softmax in float32 (upstream's non-flash path).

    q: [B, H, N, D]; k, v: [B, H, M, D]; attn_mask: bool, broadcastable to [B, H, N, M]
    (True = attend). Returns [B, H, N, D].
    """
    dtype = q.dtype
    attn = paddle.matmul(q * (q.shape[-1] ** -0.5), k, transpose_y=True).astype("float32")  # [B, H, N, M]
    if attn_mask is not None:
        attn = paddle.where(attn_mask.expand(attn.shape), attn, paddle.full([], float("-inf"), dtype="float32"))
    attn = F.softmax(attn, axis=-1).astype(dtype)
    if dropout_p > 0 and training:
        attn = F.dropout(attn, dropout_p)
    return paddle.matmul(attn, v)


def attention(q, k, v, attn_mask=None, dropout_p=0.0, training=False, use_sdpa=True):
    """Scaled dot-product attention in the heads-first layout.

    Args:
        q: [B, H, N, D]; k, v: [B, H, M, D]; attn_mask: bool broadcastable to [B, H, N, M]
            (True = attend) or None.
        use_sdpa: route through Paddle's scaled_dot_product_attention (flash attention on GPU
            for fp16/bf16); otherwise the explicit float32-softmax path. Both give the same
            result in float32.

    Returns:
        [B, H, N, D].
    """
    if use_sdpa:
        out = F.scaled_dot_product_attention(
            q.transpose([0, 2, 1, 3]),
            k.transpose([0, 2, 1, 3]),
            v.transpose([0, 2, 1, 3]),
            attn_mask=attn_mask,
            dropout_p=dropout_p,
            training=training,
        )  # [B, N, H, D]
        return out.transpose([0, 2, 1, 3])
    return _math_attention(q, k, v, attn_mask, dropout_p, training)


class Attention(nn.Layer):
    """Multi-head self-attention over [B, N, C] with optional qk RMSNorm and rotary positions.

    Args:
        dim: C; num_heads: H (C % H == 0).
        qkv_bias: bias on the fused qkv projection.
        qk_norm: RMSNorm of q and k per head.
        rope: a callable rotating [B, H, N, D] along N (temporal attention), or None.
        qk_norm_legacy: apply RoPE before the qk norm (Open-Sora 1.1 order, and 1.2's
            `qk_norm_legacy=True`); False = norm first, then RoPE (Open-Sora 1.2 default).
        enable_flash_attn: route through Paddle's scaled_dot_product_attention (flash kernels on
            GPU); False = the explicit float32 softmax path of upstream.

    Follows Open-Sora v1.1 / v1.2 `Attention`.
    """

    def __init__(
        self,
        dim,
        num_heads=8,
        qkv_bias=False,
        qk_norm=False,
        attn_drop=0.0,
        proj_drop=0.0,
        enable_flash_attn=False,
        rope=None,
        qk_norm_legacy=False,
    ):
        super().__init__()
        if dim % num_heads != 0:
            raise ValueError(f"hidden size {dim} must be divisible by num_heads {num_heads}")
        self.dim = dim
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.enable_flash_attn = enable_flash_attn
        self.qkv = nn.Linear(dim, dim * 3, bias_attr=None if qkv_bias else False)
        self.q_norm = LlamaRMSNorm(self.head_dim) if qk_norm else nn.Identity()
        self.k_norm = LlamaRMSNorm(self.head_dim) if qk_norm else nn.Identity()
        self.attn_drop = attn_drop
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        self.rope = rope
        self.qk_norm_legacy = qk_norm_legacy

    def forward(self, x):
        """x: [B, N, C] -> [B, N, C]."""
        B, N, C = x.shape
        qkv = self.qkv(x).reshape([B, N, 3, self.num_heads, self.head_dim])
        qkv = qkv.transpose([2, 0, 3, 1, 4]).contiguous()  # [3, B, H, N, D]: one copy, then views
        q, k, v = qkv[0], qkv[1], qkv[2]  # [B, H, N, D] each
        if self.qk_norm_legacy:
            if self.rope is not None:
                q, k = self.rope(q), self.rope(k)
            q, k = self.q_norm(q), self.k_norm(k)
        else:
            q, k = self.q_norm(q), self.k_norm(k)
            if self.rope is not None:
                q, k = self.rope(q), self.rope(k)
        x = attention(q, k, v, None, self.attn_drop, self.training, use_sdpa=self.enable_flash_attn)
        x = x.transpose([0, 2, 1, 3]).reshape([B, N, C])
        return self.proj_drop(self.proj(x))


class MultiHeadCrossAttention(nn.Layer):
    """Cross-attention from video tokens to the text tokens of the same sample.

    Text comes padded, [B, L, C], with a key mask [B, L] (1 = real token): each sample attends
    only to its own valid tokens, as upstream's block-diagonal xformers mask does, but without
    packing all captions into one (B*N) x sum(L) problem. Follows Open-Sora v1.1
    `MultiHeadCrossAttention` (keys `q_linear`, `kv_linear`, `proj`).
    """

    def __init__(self, d_model, num_heads, attn_drop=0.0, proj_drop=0.0, enable_flash_attn=False):
        super().__init__()
        if d_model % num_heads != 0:
            raise ValueError(f"hidden size {d_model} must be divisible by num_heads {num_heads}")
        self.d_model = d_model
        self.num_heads = num_heads
        self.head_dim = d_model // num_heads
        self.q_linear = nn.Linear(d_model, d_model)
        self.kv_linear = nn.Linear(d_model, d_model * 2)
        self.attn_drop = attn_drop
        self.proj = nn.Linear(d_model, d_model)
        self.proj_drop = nn.Dropout(proj_drop)
        self.enable_flash_attn = enable_flash_attn

    def forward(self, x, cond, mask=None):
        """
        Args:
            x: [B, N, C] video tokens.
            cond: [B, L, C] embedded text tokens.
            mask: [B, L] bool (True = valid token) or None (all tokens valid).

        Returns:
            [B, N, C].
        """
        B, N, C = x.shape
        L = cond.shape[1]
        q = self.q_linear(x).reshape([B, N, self.num_heads, self.head_dim]).transpose([0, 2, 1, 3]).contiguous()
        kv = self.kv_linear(cond).reshape([B, L, 2, self.num_heads, self.head_dim])
        kv = kv.transpose([2, 0, 3, 1, 4]).contiguous()
        k, v = kv[0], kv[1]  # [B, H, L, D]
        attn_mask = None if mask is None else mask[:, None, None, :]  # [B, 1, 1, L]
        x = attention(q, k, v, attn_mask, self.attn_drop, self.training, use_sdpa=self.enable_flash_attn)
        x = x.transpose([0, 2, 1, 3]).reshape([B, N, C])
        return self.proj_drop(self.proj(x))
