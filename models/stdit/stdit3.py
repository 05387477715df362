"""STDiT3: the Open-Sora 1.2 spatial-temporal diffusion transformer, in Paddle.

Follows hpcaitech/Open-Sora v1.2.0 `opensora/models/stdit/stdit3.py` (same parameter names, same
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


class STDiT3Block(nn.Layer):
    """One STDiT3 block, spatial or temporal: attention -> cross-attention -> MLP, adaLN-single
    with a 6-row `scale_shift_table`. Temporal blocks attend over frames with RoPE (after the qk
    norm, Open-Sora 1.2 order). With `x_mask`, condition frames use the timestep-0 table t0.

    Follows Open-Sora v1.2 `STDiT3Block`.
    """

    def __init__(
        self,
        hidden_size,
        num_heads,
        mlp_ratio=4.0,
        drop_path=0.0,
        rope=None,
        qk_norm=False,
        temporal=False,
        enable_flash_attn=False,
    ):
        super().__init__()
        self.temporal = temporal
        self.hidden_size = hidden_size
        self.attn = Attention(
            hidden_size, num_heads, qkv_bias=True, qk_norm=qk_norm, rope=rope, enable_flash_attn=enable_flash_attn
        )
        self.cross_attn = MultiHeadCrossAttention(hidden_size, num_heads, enable_flash_attn=enable_flash_attn)
        self.mlp = Mlp(hidden_size, int(hidden_size * mlp_ratio), act_layer=approx_gelu)
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        self.scale_shift_table = self.create_parameter(
            [6, hidden_size], default_initializer=nn.initializer.Normal(std=hidden_size**-0.5)
        )

    def forward(self, x, y, t, mask=None, x_mask=None, t0=None, T=None, S=None):
        """
        Args:
            x: [B, T*S, C] video tokens; y: [B, L, C] caption tokens; mask: [B, L] bool or None.
            t: [B, 6*C] adaLN input; x_mask: [B, T] bool or None with t0 [B, 6*C] for False frames.
            T, S: latent frames and spatial patches per frame.

        Returns:
            [B, T*S, C].
        """
        B = x.shape[0]
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = (
            self.scale_shift_table[None] + t.reshape([B, 6, -1])
        ).chunk(6, axis=1)
        if x_mask is not None:
            shift_msa0, scale_msa0, gate_msa0, shift_mlp0, scale_mlp0, gate_mlp0 = (
                self.scale_shift_table[None] + t0.reshape([B, 6, -1])
            ).chunk(6, axis=1)

        # attention (over frames if temporal, over patches otherwise)
        x_m = norm_modulate(x, shift_msa, scale_msa)  # LayerNorm(x) * (1 + scale) + shift
        if x_mask is not None:
            x_m = t_mask_select(x_mask, x_m, norm_modulate(x, shift_msa0, scale_msa0), T, S)
        if self.temporal:
            x_m = rearrange(x_m, "B (T S) C -> (B S) T C", T=T, S=S)
            x_m = self.attn(x_m)
            x_m = rearrange(x_m, "(B S) T C -> B (T S) C", T=T, S=S)
        else:
            x_m = rearrange(x_m, "B (T S) C -> (B T) S C", T=T, S=S)
            x_m = self.attn(x_m)
            x_m = rearrange(x_m, "(B T) S C -> B (T S) C", T=T, S=S)
        x_m_s = gate(gate_msa, x_m)
        if x_mask is not None:
            x_m_s = t_mask_select(x_mask, x_m_s, gate(gate_msa0, x_m), T, S)
        x = x + self.drop_path(x_m_s)

        # cross attention to the caption
        x = x + self.cross_attn(x, y, mask)

        # MLP
        x_m = norm_modulate(x, shift_mlp, scale_mlp)
        if x_mask is not None:
            x_m = t_mask_select(x_mask, x_m, norm_modulate(x, shift_mlp0, scale_mlp0), T, S)
        x_m = self.mlp(x_m)
        x_m_s = gate(gate_mlp, x_m)
        if x_mask is not None:
            x_m_s = t_mask_select(x_mask, x_m_s, gate(gate_mlp0, x_m), T, S)
        return x + self.drop_path(x_m_s)


class STDiT3(STDiTMixin, nn.Layer):
    """Open-Sora 1.2 video diffusion transformer: `depth` spatial and `depth` temporal blocks,
    interleaved; fps conditioning; position embedding scaled by the pixel resolution.

    Keyword names equal upstream `STDiT3Config`:
        input_size, input_sq_size (512), in_channels, patch_size, hidden_size, depth, num_heads,
        mlp_ratio, class_dropout_prob, pred_sigma, drop_path, caption_channels,
        model_max_length (300), qk_norm, enable_flash_attn (attention through Paddle's
        scaled_dot_product_attention), enable_layernorm_kernel (Paddle's LayerNorm is already
        fused; no effect), only_train_temporal, freeze_y_embedder (training switches: freeze
        everything but the temporal blocks / the caption embedder).
        enable_sequence_parallelism and skip_y_embedder are upstream features this port does not
        implement: True raises ValueError.

    `forward(x, timestep, y, mask, x_mask, num_frames, height, width, ar, fps)`; see `forward`.
    Follows Open-Sora v1.2 `STDiT3`.
    """

    model_type = "STDiT3"
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
        "caption_channels",
        "model_max_length",
        "qk_norm",
        "enable_flash_attn",
        "enable_layernorm_kernel",
        "enable_sequence_parallelism",
        "only_train_temporal",
        "freeze_y_embedder",
        "skip_y_embedder",
    )

    def __init__(
        self,
        input_size=(None, None, None),
        input_sq_size=512,
        in_channels=4,
        patch_size=(1, 2, 2),
        hidden_size=1152,
        depth=28,
        num_heads=16,
        mlp_ratio=4.0,
        class_dropout_prob=0.1,
        pred_sigma=True,
        drop_path=0.0,
        caption_channels=4096,
        model_max_length=300,
        qk_norm=True,
        enable_flash_attn=False,
        enable_layernorm_kernel=False,
        enable_sequence_parallelism=False,
        only_train_temporal=False,
        freeze_y_embedder=False,
        skip_y_embedder=False,
    ):
        super().__init__()
        if enable_sequence_parallelism:
            raise ValueError("enable_sequence_parallelism=True is not supported by this port; use False")
        if skip_y_embedder:
            raise ValueError("skip_y_embedder=True is not supported by this port; use False")
        if hidden_size % num_heads != 0 or (hidden_size // num_heads) % 2 != 0:
            raise ValueError(f"hidden_size {hidden_size} / num_heads {num_heads} must be an even integer (RoPE)")
        if len(patch_size) != 3:
            raise ValueError(f"patch_size must be (pt, ph, pw), got {patch_size}")
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
            caption_channels=caption_channels,
            model_max_length=model_max_length,
            qk_norm=qk_norm,
            enable_flash_attn=enable_flash_attn,
            enable_layernorm_kernel=enable_layernorm_kernel,
            enable_sequence_parallelism=False,
            only_train_temporal=only_train_temporal,
            freeze_y_embedder=freeze_y_embedder,
            skip_y_embedder=False,
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
        self.rope = RotaryEmbedding(hidden_size // num_heads)
        self.x_embedder = PatchEmbed3D(self.patch_size, in_channels, hidden_size)
        self.t_embedder = TimestepEmbedder(hidden_size)
        self.fps_embedder = SizeEmbedder(hidden_size)
        self.t_block = nn.Sequential(nn.Silu(), nn.Linear(hidden_size, 6 * hidden_size))
        self.y_embedder = CaptionEmbedder(
            caption_channels, hidden_size, class_dropout_prob, act_layer=approx_gelu, token_num=model_max_length
        )
        drop_rates = np.linspace(0, drop_path, depth).tolist()
        block_kwargs = dict(mlp_ratio=mlp_ratio, qk_norm=qk_norm, enable_flash_attn=enable_flash_attn)
        self.spatial_blocks = nn.LayerList(
            [STDiT3Block(hidden_size, num_heads, drop_path=drop_rates[i], **block_kwargs) for i in range(depth)]
        )
        self.temporal_blocks = nn.LayerList(
            [
                STDiT3Block(
                    hidden_size,
                    num_heads,
                    drop_path=drop_rates[i],
                    temporal=True,
                    rope=self.rope.rotate_queries_or_keys,
                    **block_kwargs,
                )
                for i in range(depth)
            ]
        )
        self.final_layer = T2IFinalLayer(hidden_size, int(np.prod(self.patch_size)), self.out_channels)

        self.initialize_weights()
        if only_train_temporal:
            for p in self.parameters():
                p.stop_gradient = True
            for block in self.temporal_blocks:
                for p in block.parameters():
                    p.stop_gradient = False
        if freeze_y_embedder:
            for p in self.y_embedder.parameters():
                p.stop_gradient = True

    def initialize_weights(self):
        """Upstream initialisation: xavier-uniform Linears with zero bias; the fps embedder's
        output layer and the temporal blocks' attention / cross-attention / fc2 weights zeroed."""
        xavier = nn.initializer.XavierUniform()
        zero = nn.initializer.Constant(0.0)
        for layer in self.sublayers():
            if isinstance(layer, nn.Linear):
                xavier(layer.weight)
                if layer.bias is not None:
                    zero(layer.bias)
        nn.initializer.Normal(std=0.02)(self.fps_embedder.mlp[0].weight)
        zero(self.fps_embedder.mlp[0].bias)
        zero(self.fps_embedder.mlp[2].weight)
        zero(self.fps_embedder.mlp[2].bias)
        for block in self.temporal_blocks:
            zero(block.attn.proj.weight)
            zero(block.cross_attn.proj.weight)
            zero(block.mlp.fc2.weight)

    def forward(
        self, x, timestep, y, mask=None, x_mask=None, num_frames=None, height=None, width=None, ar=None, fps=None
    ):
        """Predict noise (or velocity, with rectified flow) for a latent video.

        Args:
            x: latent [B, in_channels, T, H, W] float32 (any T, H, W: padded to the patch size).
            timestep: [B] timesteps (0..1000 scale).
            y: caption states [B, 1, L, caption_channels]; mask: [B, L] (1 = token) or None.
            x_mask: [B, ceil(T / patch_size[0])] bool or None; False marks condition frames (timestep-0 modulation).
            height, width: pixel size (numbers or [B]); fps: frames per second (number or [B]).
            num_frames, ar: accepted for a common signature with STDiT2; STDiT3 does not use them
                (as upstream, whose forward swallows them in **kwargs).

        Returns:
            [B, out_channels, T, H, W] float32.

        Raises:
            ValueError: x not [B, in_channels, T, H, W]; y not [B, 1, L, caption_channels]; a
                mask of the wrong shape; missing height / width / fps.
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
        fps = as_condition(fps, B, "fps", name)
        dtype = self.x_embedder.proj.weight.dtype
        x = x.astype(dtype)
        timestep = timestep.astype(dtype)
        y = y.astype(dtype)

        # position embedding of the patch grid, scaled by the pixel resolution
        _, _, Tx, Hx, Wx = x.shape
        T, H, W = dynamic_size(x.shape, self.patch_size)
        S = H * W
        resolution_sq = float((height[0] * width[0]).sqrt())
        pos_emb = self.pos_embed(H, W, scale=resolution_sq / self.input_sq_size, base_size=round(S**0.5))

        # timestep + fps -> adaLN-single inputs
        fps_emb = self.fps_embedder(fps[:, None], B)  # [B, C]
        t = self.t_embedder(timestep, dtype=x.dtype) + fps_emb  # [B, C]
        t_mlp = self.t_block(t)  # [B, 6C]
        t0 = t0_mlp = None
        if x_mask is not None:
            x_mask = x_mask.astype("bool")
            t0 = self.t_embedder(paddle.zeros_like(timestep), dtype=x.dtype) + fps_emb
            t0_mlp = self.t_block(t0)

        y, mask = self.encode_text(y, mask)  # [B, L, C], [B, L]

        x = self.x_embedder(x)  # [B, T*S, C]
        x = (x.reshape([B, T, S, -1]) + pos_emb.astype(x.dtype)[:, None]).reshape([B, T * S, -1])

        for spatial_block, temporal_block in zip(self.spatial_blocks, self.temporal_blocks):
            for block in (spatial_block, temporal_block):
                args = (x, y, t_mlp, mask, x_mask, t0_mlp, T, S)
                if self.recompute and self.training:
                    x = recompute(block, *args)
                else:
                    x = block(*args)

        x = self.final_layer(x, t, x_mask, t0, T, S)  # [B, N, prod(patch) * C_out]
        x = self.unpatchify(x, T, H, W, Tx, Hx, Wx)
        return x.astype("float32")


def STDiT3_XL_2(**kwargs):
    """The released Open-Sora 1.2 size: depth 28, hidden 1152, 16 heads, patch (1, 2, 2)."""
    config = dict(depth=28, hidden_size=1152, patch_size=(1, 2, 2), num_heads=16)
    config.update(kwargs)
    return STDiT3(**config)


def STDiT3_3B_2(**kwargs):
    """Upstream's 3B preset: depth 28, hidden 1872, 26 heads, patch (1, 2, 2)."""
    config = dict(depth=28, hidden_size=1872, patch_size=(1, 2, 2), num_heads=26)
    config.update(kwargs)
    return STDiT3(**config)
