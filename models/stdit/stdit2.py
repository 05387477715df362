"""STDiT2: the Open-Sora 1.1 spatial-temporal diffusion transformer, in Paddle.

Follows hpcaitech/Open-Sora v1.1.0 `opensora/models/stdit/stdit2.py` (same parameter names, same
computation) so that a converted upstream checkpoint gives the same output to float32 precision.
"""
import numpy as np
import paddle
import paddle.nn as nn
from einops import rearrange
from paddle.distributed.fleet.utils import recompute

from ..layers.attention import Attention, MultiHeadCrossAttention
from ..layers.blocks import DropPath, Mlp, T2IFinalLayer, approx_gelu, gate, norm_modulate, t_mask_select
from ..layers.embeddings import (
    CaptionEmbedder,
    PatchEmbed3D,
    PositionEmbedding2D,
    RotaryEmbedding,
    SizeEmbedder,
    TimestepEmbedder,
)
from .common import STDiTMixin, as_condition, check_caption, check_latent, dynamic_size


class STDiT2Block(nn.Layer):
    """One STDiT2 block: spatial attention -> temporal attention (RoPE) -> cross-attention -> MLP.

    adaLN-single: a 6-row table (`scale_shift_table`) for the spatial attention and MLP, a 3-row
    table (`scale_shift_table_temporal`) for the temporal attention. With `x_mask`, condition
    frames (False) are modulated with the timestep-0 embeddings t0 / t0_tmp.

    Follows Open-Sora v1.1 `STDiT2Block`.
    """

    def __init__(
        self,
        hidden_size,
        num_heads,
        mlp_ratio=4.0,
        drop_path=0.0,
        enable_flash_attn=False,
        rope=None,
        qk_norm=False,
    ):
        super().__init__()
        self.hidden_size = hidden_size
        self.attn = Attention(
            hidden_size, num_heads, qkv_bias=True, qk_norm=qk_norm, enable_flash_attn=enable_flash_attn
        )
        self.scale_shift_table = self.create_parameter(
            [6, hidden_size], default_initializer=nn.initializer.Normal(std=hidden_size**-0.5)
        )
        self.cross_attn = MultiHeadCrossAttention(hidden_size, num_heads, enable_flash_attn=enable_flash_attn)
        self.mlp = Mlp(hidden_size, int(hidden_size * mlp_ratio), act_layer=approx_gelu)
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        # Open-Sora 1.1 applies RoPE before the qk norm in temporal attention (kept for fidelity)
        self.attn_temp = Attention(
            hidden_size,
            num_heads,
            qkv_bias=True,
            qk_norm=qk_norm,
            enable_flash_attn=enable_flash_attn,
            rope=rope,
            qk_norm_legacy=True,
        )
        self.scale_shift_table_temporal = self.create_parameter(
            [3, hidden_size], default_initializer=nn.initializer.Normal(std=hidden_size**-0.5)
        )

    def forward(self, x, y, t, t_tmp, mask=None, x_mask=None, t0=None, t0_tmp=None, T=None, S=None):
        """
        Args:
            x: [B, T*S, C] video tokens.
            y: [B, L, C] embedded caption tokens; mask: [B, L] bool or None.
            t: [B, 6*C] spatial adaLN input; t_tmp: [B, 3*C] temporal adaLN input.
            x_mask: [B, T] bool or None (False = condition frame, uses t0 [B, 6*C] / t0_tmp [B, 3*C]).
            T, S: latent frames and spatial patches per frame.

        Returns:
            [B, T*S, C].
        """
        B = x.shape[0]
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = (
            self.scale_shift_table[None] + t.reshape([B, 6, -1])
        ).chunk(6, axis=1)
        shift_tmp, scale_tmp, gate_tmp = (self.scale_shift_table_temporal[None] + t_tmp.reshape([B, 3, -1])).chunk(
            3, axis=1
        )
        shift_msa0 = scale_msa0 = gate_msa0 = shift_mlp0 = scale_mlp0 = gate_mlp0 = None
        shift_tmp0 = scale_tmp0 = gate_tmp0 = None
        if x_mask is not None:
            shift_msa0, scale_msa0, gate_msa0, shift_mlp0, scale_mlp0, gate_mlp0 = (
                self.scale_shift_table[None] + t0.reshape([B, 6, -1])
            ).chunk(6, axis=1)
            shift_tmp0, scale_tmp0, gate_tmp0 = (
                self.scale_shift_table_temporal[None] + t0_tmp.reshape([B, 3, -1])
            ).chunk(3, axis=1)

        def modulate(h, shift, scale, shift0, scale0):
            out = norm_modulate(h, shift, scale)  # LayerNorm(h) * (1 + scale) + shift
            if x_mask is not None:
                out = t_mask_select(x_mask, out, norm_modulate(h, shift0, scale0), T, S)
            return out

        def gated(h, g, g0):
            if x_mask is not None:
                return t_mask_select(x_mask, gate(g, h), gate(g0, h), T, S)
            return gate(g, h)

        # spatial attention
        x_m = modulate(x, shift_msa, scale_msa, shift_msa0, scale_msa0)
        x_s = rearrange(x_m, "B (T S) C -> (B T) S C", T=T, S=S)
        x_s = self.attn(x_s)
        x_s = rearrange(x_s, "(B T) S C -> B (T S) C", T=T, S=S)
        x = x + self.drop_path(gated(x_s, gate_msa, gate_msa0))

        # temporal attention
        x_m = modulate(x, shift_tmp, scale_tmp, shift_tmp0, scale_tmp0)
        x_t = rearrange(x_m, "B (T S) C -> (B S) T C", T=T, S=S)
        x_t = self.attn_temp(x_t)
        x_t = rearrange(x_t, "(B S) T C -> B (T S) C", T=T, S=S)
        x = x + self.drop_path(gated(x_t, gate_tmp, gate_tmp0))

        # cross attention to the caption
        x = x + self.cross_attn(x, y, mask)

        # MLP
        x_m = modulate(x, shift_mlp, scale_mlp, shift_mlp0, scale_mlp0)
        x_mlp = self.mlp(x_m)
        x = x + self.drop_path(gated(x_mlp, gate_mlp, gate_mlp0))
        return x


class STDiT2(STDiTMixin, nn.Layer):
    """Open-Sora 1.1 video diffusion transformer.

    Keyword names equal upstream `STDiT2Config`. The model predicts noise (and, with
    `pred_sigma`, the learned-range variance: out channels = 2 x in_channels) for a latent video.

    Args:
        input_size: nominal latent (T, H, W); informational, any size works (dynamic input).
        input_sq_size: the square resolution (pixels) the position embedding is scaled to.
        in_channels: latent channels (4 for the SD VAE).
        patch_size: (pt, ph, pw).
        hidden_size, depth, num_heads, mlp_ratio: transformer size (hidden_size % 3 == 0).
        class_dropout_prob: caption dropout probability inside the caption embedder in training.
        pred_sigma: predict the variance too.
        drop_path: stochastic depth, linearly increasing over blocks.
        no_temporal_pos_emb: upstream flag, stored (STDiT2 has no temporal position table).
        caption_channels: text-encoder width (4096 for T5-XXL).
        model_max_length: caption tokens (size of the null caption table).
        freeze: None, "not_temporal" (train only temporal attention) or "text" (freeze cross-attn).
        qk_norm: RMSNorm on q and k.
        enable_flash_attn: attention through Paddle's scaled_dot_product_attention (flash on GPU).
        enable_layernorm_kernel: upstream's apex fused LayerNorm switch; Paddle's LayerNorm is
            already a fused kernel, so both values compute the same thing.

    `forward(x, timestep, y, mask, x_mask, num_frames, height, width, ar, fps)`; see `forward`.
    Follows Open-Sora v1.1 `STDiT2`.
    """

    model_type = "STDiT2"
    config_keys = (
        "input_size",
        "input_sq_size",
        "in_channels",
        "patch_size",
        "hidden_size",
        "depth",
        "num_heads",
        "mlp_ratio",
        "class_dropout_prob",
        "pred_sigma",
        "drop_path",
        "no_temporal_pos_emb",
        "caption_channels",
        "model_max_length",
        "freeze",
        "qk_norm",
        "enable_flash_attn",
        "enable_layernorm_kernel",
    )

    def __init__(
        self,
        input_size=(None, None, None),
        input_sq_size=32,
        in_channels=4,
        patch_size=(1, 2, 2),
        hidden_size=1152,
        depth=28,
        num_heads=16,
        mlp_ratio=4.0,
        class_dropout_prob=0.1,
        pred_sigma=True,
        drop_path=0.0,
        no_temporal_pos_emb=False,
        caption_channels=4096,
        model_max_length=120,
        freeze=None,
        qk_norm=False,
        enable_flash_attn=False,
        enable_layernorm_kernel=False,
    ):
        super().__init__()
        if hidden_size % 3 != 0:
            raise ValueError(f"STDiT2 hidden_size must be divisible by 3 (size conditioning), got {hidden_size}")
        if hidden_size % num_heads != 0 or (hidden_size // num_heads) % 2 != 0:
            raise ValueError(f"hidden_size {hidden_size} / num_heads {num_heads} must be an even integer (RoPE)")
        if len(patch_size) != 3:
            raise ValueError(f"patch_size must be (pt, ph, pw), got {patch_size}")
        if freeze not in (None, "not_temporal", "text"):
            raise ValueError(f"freeze must be None, 'not_temporal' or 'text', got {freeze!r}")
        self.config = dict(
            input_size=list(input_size),
            input_sq_size=input_sq_size,
            in_channels=in_channels,
            patch_size=list(patch_size),
            hidden_size=hidden_size,
            depth=depth,
            num_heads=num_heads,
            mlp_ratio=mlp_ratio,
            class_dropout_prob=class_dropout_prob,
            pred_sigma=pred_sigma,
            drop_path=drop_path,
            no_temporal_pos_emb=no_temporal_pos_emb,
            caption_channels=caption_channels,
            model_max_length=model_max_length,
            freeze=freeze,
            qk_norm=qk_norm,
            enable_flash_attn=enable_flash_attn,
            enable_layernorm_kernel=enable_layernorm_kernel,
        )
        self.in_channels = in_channels
        self.out_channels = in_channels * 2 if pred_sigma else in_channels
        self.hidden_size = hidden_size
        self.num_heads = num_heads
        self.depth = depth
        self.patch_size = tuple(int(p) for p in patch_size)
        self.input_sq_size = input_sq_size
        self.caption_channels = caption_channels
        self.recompute = False

        self.pos_embed = PositionEmbedding2D(hidden_size)
        self.x_embedder = PatchEmbed3D(self.patch_size, in_channels, hidden_size)
        self.t_embedder = TimestepEmbedder(hidden_size)
        self.t_block = nn.Sequential(nn.Silu(), nn.Linear(hidden_size, 6 * hidden_size))
        self.t_block_temp = nn.Sequential(nn.Silu(), nn.Linear(hidden_size, 3 * hidden_size))
        self.y_embedder = CaptionEmbedder(
            caption_channels, hidden_size, class_dropout_prob, act_layer=approx_gelu, token_num=model_max_length
        )
        self.rope = RotaryEmbedding(hidden_size // num_heads)
        drop_rates = np.linspace(0, drop_path, depth).tolist()
        self.blocks = nn.LayerList(
            [
                STDiT2Block(
                    hidden_size,
                    num_heads,
                    mlp_ratio=mlp_ratio,
                    drop_path=drop_rates[i],
                    enable_flash_attn=enable_flash_attn,
                    rope=self.rope.rotate_queries_or_keys,
                    qk_norm=qk_norm,
                )
                for i in range(depth)
            ]
        )
        self.final_layer = T2IFinalLayer(hidden_size, int(np.prod(self.patch_size)), self.out_channels)
        self.csize_embedder = SizeEmbedder(hidden_size // 3)
        self.ar_embedder = SizeEmbedder(hidden_size // 3)
        self.fl_embedder = SizeEmbedder(hidden_size)
        self.fps_embedder = SizeEmbedder(hidden_size)

        self.initialize_weights()
        if freeze == "not_temporal":
            for name, p in self.named_parameters():
                p.stop_gradient = "attn_temp" not in name
        elif freeze == "text":
            for name, p in self.named_parameters():
                if "cross_attn" in name:
                    p.stop_gradient = True

    # ------------------------------------------------------------------ init
    def initialize_weights(self):
        """Upstream initialisation: xavier-uniform Linears with zero bias, N(0, 0.02) timestep and
        caption MLPs, zero cross-attention / temporal-attention / final projections."""
        xavier = nn.initializer.XavierUniform()
        zero = nn.initializer.Constant(0.0)
        normal = nn.initializer.Normal(std=0.02)
        for layer in self.sublayers():
            if isinstance(layer, nn.Linear):
                xavier(layer.weight)
                if layer.bias is not None:
                    zero(layer.bias)
        w = self.x_embedder.proj.weight
        fan_out, fan_in = w.shape[0], int(np.prod(w.shape[1:]))
        nn.initializer.XavierUniform(fan_in=fan_in, fan_out=fan_out)(w)
        for lin in (self.t_embedder.mlp[0], self.t_embedder.mlp[2], self.t_block[1], self.t_block_temp[1]):
            normal(lin.weight)
        normal(self.y_embedder.y_proj.fc1.weight)
        normal(self.y_embedder.y_proj.fc2.weight)
        for block in self.blocks:
            zero(block.cross_attn.proj.weight)
            zero(block.cross_attn.proj.bias)
            zero(block.attn_temp.proj.weight)
            zero(block.attn_temp.proj.bias)
        zero(self.final_layer.linear.weight)
        zero(self.final_layer.linear.bias)

    # --------------------------------------------------------------- forward
    def forward(
        self, x, timestep, y, mask=None, x_mask=None, num_frames=None, height=None, width=None, ar=None, fps=None
    ):
        """Predict noise (and variance) for a latent video.

        Args:
            x: latent [B, in_channels, T, H, W] float32 (any T, H, W: padded to the patch size).
            timestep: [B] diffusion timesteps (0..999 scale).
            y: caption states [B, 1, L, caption_channels].
            mask: [B, L] (1 = token) or None (all L tokens used).
            x_mask: [B, ceil(T / patch_size[0])] bool or None; False marks condition frames (timestep-0 modulation).
            num_frames, height, width, ar, fps: per-sample video info (numbers or [B] tensors):
                pixel frames, pixel height / width, aspect ratio (height / width), frames/s.

        Returns:
            [B, out_channels, T, H, W] float32.

        Raises:
            ValueError: x not [B, in_channels, T, H, W]; y not [B, 1, L, caption_channels]; a mask
                of the wrong shape; missing size conditioning.
        """
        name = self.model_type
        check_latent(x, self.in_channels, name)
        B = x.shape[0]
        check_caption(y, mask, B, self.caption_channels, name)
        T_tok = dynamic_size(x.shape, self.patch_size)[0]  # ceil(T / patch_size[0]) token frames
        if x_mask is not None and list(x_mask.shape) != [B, T_tok]:
            raise ValueError(
                f"{name}: x_mask must have shape [B, ceil(T / patch_size[0])] = [{B}, {T_tok}], got {list(x_mask.shape)}"
            )
        height = as_condition(height, B, "height", name)
        width = as_condition(width, B, "width", name)
        ar = as_condition(ar, B, "ar", name)
        num_frames = as_condition(num_frames, B, "num_frames", name)
        fps = as_condition(fps, B, "fps", name)
        dtype = self.x_embedder.proj.weight.dtype
        x = x.astype(dtype)
        timestep = timestep.astype(dtype)
        y = y.astype(dtype)

        # size / aspect-ratio / frames / fps conditioning
        hw = paddle.stack([height, width], axis=1)  # [b, 2]
        rs = float((height[0] * width[0]).sqrt())
        data_info = paddle.concat([self.csize_embedder(hw, B), self.ar_embedder(ar[:, None], B)], axis=1)  # [B, C]
        fl = self.fl_embedder(num_frames[:, None], B) + self.fps_embedder(fps[:, None], B)  # [B, C]

        # patch tokens + 2-D position embedding
        _, _, Tx, Hx, Wx = x.shape
        T, H, W = dynamic_size(x.shape, self.patch_size)
        S = H * W
        pos_emb = self.pos_embed(H, W, scale=rs / self.input_sq_size, base_size=round(S**0.5))  # [1, S, C]
        x = self.x_embedder(x)  # [B, T*S, C]
        x = (x.reshape([B, T, S, -1]) + pos_emb.astype(x.dtype)[:, None]).reshape([B, T * S, -1])

        # adaLN-single inputs
        t = self.t_embedder(timestep, dtype=x.dtype)  # [B, C]
        t_spc_mlp = self.t_block(t + data_info)  # [B, 6C]
        t_tmp_mlp = self.t_block_temp(t + fl)  # [B, 3C]
        t0_spc = t0_spc_mlp = t0_tmp_mlp = None
        if x_mask is not None:
            x_mask = x_mask.astype("bool")
            t0 = self.t_embedder(paddle.zeros_like(timestep), dtype=x.dtype)
            t0_spc = t0 + data_info
            t0_spc_mlp = self.t_block(t0_spc)
            t0_tmp_mlp = self.t_block_temp(t0 + fl)

        y, mask = self.encode_text(y, mask)  # [B, L, C], [B, L]

        for block in self.blocks:
            args = (x, y, t_spc_mlp, t_tmp_mlp, mask, x_mask, t0_spc_mlp, t0_tmp_mlp, T, S)
            if self.recompute and self.training:
                x = recompute(block, *args)
            else:
                x = block(*args)

        # upstream passes t (not t + data_info) for generated frames and t0 + data_info for
        # condition frames to the final layer; kept for fidelity
        x = self.final_layer(x, t, x_mask, t0_spc, T, S)  # [B, N, prod(patch) * C_out]
        x = self.unpatchify(x, T, H, W, Tx, Hx, Wx)
        return x.astype("float32")


def STDiT2_XL_2(**kwargs):
    """The released Open-Sora 1.1 size: depth 28, hidden 1152, 16 heads, patch (1, 2, 2)."""
    config = dict(depth=28, hidden_size=1152, patch_size=(1, 2, 2), num_heads=16)
    config.update(kwargs)
    return STDiT2(**config)
