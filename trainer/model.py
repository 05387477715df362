"""The training wrapper: a batch of clips and captions in, the diffusion loss out.

    video [B, 3, T, H, W] ──VAE.encode──> latent [B, C, T, h, w] ─┐
    text  [B] ──T5.encode──> y [B, 1, L, C_txt], mask [B, L] ──────┤ caption dropout (null caption)
                                         frame mask [B, T] (MaskGenerator) ──┤
                                                                     ▼
                      scheduler.training_losses(dit, latent, model_kwargs, mask)["loss"].mean()

Only the DiT is a sublayer: the VAE and the text encoder sit in a plain dict, so they are never in
`parameters()` (the optimizer), `state_dict()` (checkpoints) or the data-parallel wrapper.
"""
import math

import numpy as np
import paddle
import paddle.nn as nn

from .masks import MaskGenerator


class OpenSoraTrainModel(nn.Layer):
    """Trainable DiT with frozen VAE and text encoder, returning the diffusion loss.

    Args:
        dit: STDiT2 / STDiT3 (trained).
        vae: `VideoAutoencoderKL` (frozen), or None when training from cached latents.
        text_encoder: `T5Encoder` (frozen), or None when training from cached text features.
        scheduler: IDDPM or RFlow (its `training_losses` gives the loss).
        mask_generator: a `MaskGenerator`, or None for no frame masks.
        caption_dropout: probability that a sample's caption is replaced by the DiT's null caption
            (a uniform draw per sample, for classifier-free guidance). The DiT's own caption dropout
            (`y_embedder.uncond_prob`) is switched off so that it is not applied twice.

    Raises:
        ValueError: the text encoder's token length differs from the DiT's `model_max_length`, or
            its width from the DiT's `caption_channels`.
    """

    def __init__(self, dit, vae, text_encoder, scheduler, mask_generator=None, caption_dropout=0.1):
        super().__init__()
        self.dit = dit
        self.frozen = {"vae": vae, "text_encoder": text_encoder}  # a plain dict: not sublayers
        for component in self.frozen.values():
            if component is not None:
                component.eval()
                for p in component.parameters():
                    p.stop_gradient = True
        if text_encoder is not None:
            tokens, width = text_encoder.model_max_length, text_encoder.output_dim
            if tokens != dit.config["model_max_length"] or width != dit.config["caption_channels"]:
                raise ValueError(
                    f"the text encoder gives {tokens} tokens of width {width}, but the DiT expects "
                    f"model_max_length {dit.config['model_max_length']} and caption_channels "
                    f"{dit.config['caption_channels']}"
                )
        self.scheduler = scheduler
        self.mask_generator = mask_generator
        self.caption_dropout = float(caption_dropout)
        dit.y_embedder.uncond_prob = 0.0  # dropout is drawn here, see the class docstring

    @property
    def vae(self):
        return self.frozen["vae"]

    @property
    def text_encoder(self):
        return self.frozen["text_encoder"]

    @paddle.no_grad()
    def encode_video(self, video):
        """[B, 3, T, H, W] float32 in [-1, 1] (tensor or numpy) -> latent [B, C, T, h, w]."""
        if self.vae is None:
            raise ValueError("this model has no VAE: give cached latents (`latent=`) instead of `video=`")
        video = paddle.to_tensor(video) if not isinstance(video, paddle.Tensor) else video
        return self.vae.encode(video.astype("float32")).detach()

    @paddle.no_grad()
    def encode_text(self, text):
        """list of B captions -> (y [B, 1, L, C_txt], mask [B, L])."""
        if self.text_encoder is None:
            raise ValueError("this model has no text encoder: give cached features (`y=`, `y_mask=`) instead of `text=`")
        out = self.text_encoder.encode(list(text))
        return out["y"].detach(), out["mask"]

    def drop_captions(self, y):
        """Replace whole captions by the null caption with probability `caption_dropout` each."""
        B = y.shape[0]
        drop = paddle.rand([B]) < self.caption_dropout  # [B] bool, uniform draw
        null = self.dit.null_caption(B).astype(y.dtype)  # [B, 1, L, C_txt]
        return paddle.where(drop[:, None, None, None], null, y)

    def frame_mask(self, batch_size, num_frames):
        """(mask [B, T] bool, x_mask [B, ceil(T / pt)] bool) from the mask generator; (None, None) without one.

        A token frame (pt latent frames with the DiT's temporal patch size pt) is generated if any
        of its frames is."""
        if self.mask_generator is None:
            return None, None
        mask = self.mask_generator.get_masks(batch_size, num_frames)  # [B, T] numpy bool
        pt = int(self.dit.patch_size[0])
        n_tok = math.ceil(num_frames / pt)
        padded = np.ones((batch_size, n_tok * pt), dtype=bool)
        padded[:, :num_frames] = mask
        x_mask = padded.reshape(batch_size, n_tok, pt).any(axis=2)  # [B, ceil(T / pt)]
        return paddle.to_tensor(mask), paddle.to_tensor(x_mask)

    def forward(self, video=None, text=None, num_frames=None, height=None, width=None, ar=None, fps=None,
                latent=None, y=None, y_mask=None):
        """The mean diffusion loss of a batch.

        Args:
            video: [B, 3, T, H, W] float32 in [-1, 1]; or `latent` [B, C, T, h, w] (cached VAE latents).
            text: list of B captions; or `y` [B, 1, L, C_txt] with `y_mask` [B, L] (cached features).
            num_frames, height, width, ar, fps: per-sample clip info [B] (pixel frames and size,
                aspect ratio height / width, frames per second), passed to the DiT.

        Returns:
            {"loss": scalar float32 tensor}.
        """
        if (video is None) == (latent is None):
            raise ValueError("give exactly one of video= (pixels) and latent= (cached VAE latents)")
        if (text is None) == (y is None):
            raise ValueError("give exactly one of text= (captions) and y= (cached text features)")
        x = self.encode_video(video) if latent is None else paddle.to_tensor(latent).astype("float32")
        if y is None:
            y, y_mask = self.encode_text(text)
        B, T = x.shape[0], x.shape[2]
        if self.training and self.caption_dropout > 0:
            y = self.drop_captions(y)
        model_kwargs = dict(y=y, mask=y_mask, num_frames=num_frames, height=height, width=width, ar=ar, fps=fps)
        mask = None
        if self.training:
            mask, x_mask = self.frame_mask(B, T)
            if x_mask is not None:
                model_kwargs["x_mask"] = x_mask
        loss = self.scheduler.training_losses(self.dit, x, model_kwargs=model_kwargs, mask=mask)["loss"]
        return {"loss": loss.mean()}


def text_encoder_spec(model_args):
    """The "text_encoder" config section (see `utils.config.build_text_encoder`) of parsed arguments."""
    spec = {"type": model_args.text_encoder_type, "from_pretrained": model_args.text_encoder_path}
    if model_args.tokenizer_path:
        spec["tokenizer_path"] = model_args.tokenizer_path
    if model_args.text_context_window:
        spec.update(context_window=model_args.text_context_window, context_weight=model_args.text_context_weight)
    return spec


def build_train_model(model_args, data_args):
    """The wrapper from parsed arguments: DiT (new or from a folder), frozen VAE and text encoder
    (not loaded when training from cached features), scheduler and mask generator (see `trainer_args`).

    Raises:
        ValueError: --vae_path / --text_encoder_path missing when training from videos.
    """
    from schedulers import build_scheduler
    from utils.config import build_model, build_text_encoder, build_vae

    if model_args.pretrained_model_path:
        dit = build_model({"type": model_args.model_type}, ckpt_path=model_args.pretrained_model_path)
    else:
        dit = build_model({"type": model_args.model_type, **model_args.dit_config()})
    scheduler = build_scheduler(model_args.scheduler_kwargs())
    masks = MaskGenerator.from_file(data_args.mask_ratios) if data_args.mask_ratios else None
    if getattr(data_args, "feature_path", None):
        return OpenSoraTrainModel(dit, None, None, scheduler, masks, model_args.caption_dropout)
    required = ("vae_path", "text_encoder_path") if model_args.text_encoder_type == "t5" else ("vae_path",)
    missing = [name for name in required if getattr(model_args, name) is None]  # minilm: packaged weights
    if missing:
        raise ValueError(f"missing {', '.join('--' + m for m in missing)} (needed to train from videos)")
    vae = build_vae(
        {"type": "VideoAutoencoderKL", "from_pretrained": model_args.vae_path}, model_args.vae_micro_batch_size
    )
    text_encoder = build_text_encoder(text_encoder_spec(model_args), model_args.model_max_length or dit.config["model_max_length"])
    return OpenSoraTrainModel(dit, vae, text_encoder, scheduler, masks, model_args.caption_dropout)
