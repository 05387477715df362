"""Per-frame video VAE: a ppdiffusers `AutoencoderKL` applied to every frame of a video.

Follows upstream Open-Sora v1.1 / v1.2 `opensora/models/vae/vae.py` (`VideoAutoencoderKL`): frames
are folded into the batch, encoded (or decoded) in chunks of `micro_batch_size` frames, and the
latent is scaled by 0.18215 (the Stable Diffusion VAE constant). Differences from upstream: the
spatial factor is read from the VAE config instead of being hard-coded to 8, inputs are validated,
and a checkpoint whose weights do not cover the model exactly is rejected.
"""
import json
import os
import shutil
import tempfile

import numpy as np
import paddle
from einops import rearrange
from ppdiffusers import AutoencoderKL

__all__ = ["VideoAutoencoderKL", "SD_VAE_SCALING_FACTOR"]

SD_VAE_SCALING_FACTOR = 0.18215

# Weight files ppdiffusers reads from a folder, by layout (see ppdiffusers.utils.constants).
_DIFFUSERS_WEIGHT_FILES = (
    "diffusion_pytorch_model.safetensors",
    "diffusion_pytorch_model.safetensors.index.json",
    "diffusion_pytorch_model.bin",
    "diffusion_pytorch_model.bin.index.json",
)
_PADDLE_WEIGHT_FILES = (
    "diffusion_paddle_model.safetensors",
    "diffusion_paddle_model.safetensors.index.json",
    "model_state.pdparams",
    "model_state.pdparams.index.json",
)


def _check_positive_int_or_none(name, value):
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value <= 0):
        raise ValueError(f"{name} must be None or a positive int, got {value!r}")


def _read_vae_config(path):
    """Check `path` is a VAE folder ppdiffusers can load; return (config dict, from_diffusers)."""
    if not os.path.isdir(path):
        raise ValueError(
            f"VAE folder {path!r} does not exist or is not a directory; expected a folder with "
            "config.json and diffusion_pytorch_model.safetensors (diffusers format)"
        )
    config_file = os.path.join(path, "config.json")
    if not os.path.isfile(config_file):
        raise ValueError(f"VAE folder {path!r} has no config.json")
    with open(config_file, "r", encoding="utf-8") as f:
        try:
            config = json.load(f)
        except json.JSONDecodeError as err:
            raise ValueError(f"VAE config {config_file!r} is not valid JSON: {err}") from None
    class_name = config.get("_class_name", "AutoencoderKL")
    if class_name != "AutoencoderKL":
        raise ValueError(
            f"VAE config {config_file!r} describes a {class_name!r}; only 'AutoencoderKL' is accepted "
            "(for a full Stable Diffusion folder pass its 'vae' subfolder)"
        )
    if config.get("mid_block_add_attention", True) is not True:
        raise ValueError(
            f"VAE config {config_file!r} sets mid_block_add_attention={config['mid_block_add_attention']!r}; "
            "ppdiffusers 0.29 always builds the mid-block attention, so only true is accepted"
        )
    files = set(os.listdir(path))
    if files & set(_DIFFUSERS_WEIGHT_FILES):
        return config, True
    if files & set(_PADDLE_WEIGHT_FILES):
        return config, False
    raise ValueError(
        f"VAE folder {path!r} has no weight file; expected one of "
        f"{list(_DIFFUSERS_WEIGHT_FILES + _PADDLE_WEIGHT_FILES)}"
    )


class VideoAutoencoderKL(paddle.nn.Layer):
    """Image VAE applied frame by frame to videos.

    Args:
        module: the 2-D `ppdiffusers.AutoencoderKL` (its parameters are this layer's `module.*`).
        micro_batch_size: frames per `module.encode` / `module.decode` call; None = all frames at
            once. Results do not depend on it (up to float rounding).
        scaling_factor: latent scale; encode returns `latent * scaling_factor`, decode divides by
            it. 0.18215 is upstream's (hard-coded) value for the SD VAE.
        deterministic: encode returns the posterior mean instead of a sample.

    Raises:
        ValueError: micro_batch_size is not None or a positive int; scaling_factor is not a
            positive number.

    Use `VideoAutoencoderKL.from_pretrained(folder)` to load weights. The layer is not wrapped in
    `no_grad`: callers that keep it frozen decide that (it is returned in eval mode with
    `stop_gradient=True` parameters).
    """

    def __init__(self, module, micro_batch_size=None, scaling_factor=SD_VAE_SCALING_FACTOR, deterministic=False):
        super().__init__()
        if not isinstance(module, AutoencoderKL):
            raise ValueError(f"module must be a ppdiffusers AutoencoderKL, got {type(module).__name__}")
        _check_positive_int_or_none("micro_batch_size", micro_batch_size)
        if isinstance(scaling_factor, bool) or not isinstance(scaling_factor, (int, float)) or scaling_factor <= 0:
            raise ValueError(f"scaling_factor must be a positive number, got {scaling_factor!r}")
        self.module = module
        self.micro_batch_size = micro_batch_size
        self.scaling_factor = float(scaling_factor)
        self.deterministic = bool(deterministic)

    @classmethod
    def from_pretrained(
        cls, path, micro_batch_size=None, scaling_factor=SD_VAE_SCALING_FACTOR, deterministic=False
    ):
        """Load an `AutoencoderKL` folder and wrap it.

        Args:
            path: folder with `config.json` and weights, either in diffusers format
                (`diffusion_pytorch_model.safetensors` / `.bin`, e.g. `stabilityai/sd-vae-ft-ema`) or
                as written by ppdiffusers in Paddle layout (`diffusion_paddle_model.safetensors`,
                `model_state.pdparams`). Nothing is written into the folder.
            micro_batch_size, scaling_factor, deterministic: see the class.

        Returns:
            VideoAutoencoderKL in eval mode, parameters frozen (`stop_gradient=True`).

        Raises:
            ValueError: the folder is missing, has no config.json or no weight file, the config is
                not an AutoencoderKL this ppdiffusers can build, or the checkpoint's tensors do not
                match the model's parameters exactly (missing / unexpected / mismatched keys).
        """
        path = os.fspath(path)
        _, from_diffusers = _read_vae_config(path)
        # ppdiffusers warns that `mid_block_add_attention` is "ignored": it always builds that block,
        # and configs asking for no block are rejected by `_read_vae_config`, so the notice is noise
        from ppdiffusers.utils import logging as pd_logging

        verbosity = pd_logging.get_verbosity()
        pd_logging.set_verbosity_error()
        try:
            module, info = AutoencoderKL.from_pretrained(
                path, from_diffusers=from_diffusers, output_loading_info=True
            )
        finally:
            pd_logging.set_verbosity(verbosity)
        problems = {k: info.get(k) for k in ("missing_keys", "unexpected_keys", "mismatched_keys", "error_msgs")}
        problems = {k: v for k, v in problems.items() if v}
        if problems:
            details = "; ".join(f"{k}: {v}" for k, v in problems.items())
            raise ValueError(f"VAE checkpoint in {path!r} does not match the AutoencoderKL it configures: {details}")
        module.eval()
        for param in module.parameters():
            param.stop_gradient = True
        return cls(
            module, micro_batch_size=micro_batch_size, scaling_factor=scaling_factor, deterministic=deterministic
        )

    def save_pretrained(self, save_directory):
        """Write the 2-D VAE in diffusers format (config.json + diffusion_pytorch_model.safetensors).

        The folder loads back with `from_pretrained` (and with diffusers). Files are written to a
        temporary folder beside `save_directory` and moved in, so a failure leaves no half-written
        file. The wrapper settings (micro_batch_size, scaling_factor, deterministic) are runtime
        options and are not saved.

        Raises:
            ValueError: save_directory exists and is not a directory.
        """
        save_directory = os.path.abspath(os.fspath(save_directory))
        if os.path.exists(save_directory) and not os.path.isdir(save_directory):
            raise ValueError(f"save_directory {save_directory!r} exists and is not a directory")
        parent = os.path.dirname(save_directory)
        os.makedirs(parent, exist_ok=True)
        tmp = tempfile.mkdtemp(prefix=".vae-tmp-", dir=parent)
        try:
            self.module.save_pretrained(tmp, to_diffusers=True)
            os.makedirs(save_directory, exist_ok=True)
            for name in os.listdir(tmp):
                os.replace(os.path.join(tmp, name), os.path.join(save_directory, name))
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    # ----------------------------------------------------------------- properties
    @property
    def spatial_factor(self):
        """Down-sampling factor of H and W: 2 ** (len(block_out_channels) - 1) (8 for the SD VAE)."""
        return 2 ** (len(self.module.config.block_out_channels) - 1)

    @property
    def patch_size(self):
        """(1, f, f): one latent frame per frame, f = `spatial_factor`."""
        return (1, self.spatial_factor, self.spatial_factor)

    @property
    def in_channels(self):
        """Pixel channels (3)."""
        return self.module.config.in_channels

    @property
    def out_channels(self):
        """Latent channels (4 for the SD VAE)."""
        return self.module.config.latent_channels

    @property
    def dtype(self):
        """Parameter dtype of the wrapped VAE."""
        return self.module.encoder.conv_in.weight.dtype

    # ----------------------------------------------------------------- shapes
    def get_latent_size(self, input_size):
        """Latent [T, H, W] of a video of `input_size` = [T, H, W] (an entry may be None).

        Returns:
            list [T, H // f, W // f] with None kept, f = `spatial_factor`.

        Raises:
            ValueError: input_size is not 3 entries of positive int / None, or H or W is not
                divisible by f (such a frame cannot be encoded).
        """
        if not isinstance(input_size, (list, tuple)) or len(input_size) != 3:
            raise ValueError(f"input_size must be [T, H, W] (entries int or None), got {input_size!r}")
        for value in input_size:
            _check_positive_int_or_none(f"input_size entry (in {list(input_size)!r})", value)
        latent = []
        for value, factor, axis in zip(input_size, self.patch_size, "THW"):
            if value is None:
                latent.append(None)
                continue
            if value % factor != 0:
                raise ValueError(
                    f"input {axis}={value} (input_size {list(input_size)!r}) is not divisible by the VAE's "
                    f"spatial factor {factor}; accepted: multiples of {factor}"
                )
            latent.append(value // factor)
        return latent

    def _check_input(self, x, channels, what):
        if not isinstance(x, paddle.Tensor):
            raise ValueError(f"{what} must be a paddle.Tensor [B, {channels}, T, H, W], got {type(x).__name__}")
        shape = list(x.shape)
        if len(shape) != 5 or shape[1] != channels:
            raise ValueError(
                f"{what} must be a 5-D tensor [B, {channels}, T, H, W], got shape {shape}"
            )
        return shape

    def _chunks(self, n):
        size = self.micro_batch_size or n
        return [(start, min(start + size, n)) for start in range(0, n, size)]

    # ----------------------------------------------------------------- encode / decode
    def encode(self, x, seed=None):
        """Encode a video into scaled latents.

        Args:
            x: [B, 3, T, H, W] float32 in [-1, 1]; H and W divisible by `spatial_factor`.
            seed: optional int; the posterior sample then uses noise drawn from
                `numpy.random.default_rng(seed)` for the whole [(B T), C, h, w] latent at once, so
                the result is reproducible and independent of `micro_batch_size`. With None the
                noise comes from paddle's global generator (`paddle.seed`). Ignored when
                `deterministic` is True (no noise is drawn).

        Returns:
            [B, C_latent, T, H / f, W / f] float32: `sample * scaling_factor` (or
            `mean * scaling_factor` when deterministic).

        Raises:
            ValueError: x is not 5-D with `in_channels` channels, H or W is not divisible by the
                spatial factor, or seed is not an int.
        """
        b, _, _, h, w = self._check_input(x, self.in_channels, "VAE encode input x")
        f = self.spatial_factor
        if h % f != 0 or w % f != 0:
            raise ValueError(
                f"VAE encode input x has shape {list(x.shape)}: H={h} and W={w} must both be divisible by "
                f"the VAE's spatial factor {f}"
            )
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, (int, np.integer))):
            raise ValueError(f"seed must be None or an int, got {seed!r}")
        frames = rearrange(x, "B C T H W -> (B T) C H W")  # [B*T, 3, H, W]
        n = frames.shape[0]
        noise = None
        if seed is not None and not self.deterministic:
            rng = np.random.default_rng(int(seed))
            noise = rng.standard_normal((n, self.out_channels, h // f, w // f), dtype=np.float32)
        latents = []
        for start, stop in self._chunks(n):
            dist = self.module.encode(frames[start:stop]).latent_dist
            if self.deterministic:
                z = dist.mode()
            else:
                if noise is None:
                    eps = paddle.randn(dist.mean.shape, dtype=dist.mean.dtype)
                else:
                    eps = paddle.to_tensor(noise[start:stop], dtype=dist.mean.dtype)
                z = dist.mean + dist.std * eps
            latents.append(z * self.scaling_factor)  # [chunk, C_latent, h, w]
        z = paddle.concat(latents, axis=0)  # [B*T, C_latent, h, w]
        return rearrange(z, "(B T) C H W -> B C T H W", B=b)

    def decode(self, z):
        """Decode scaled latents into a video.

        Args:
            z: [B, C_latent, T, h, w] float32, as returned by `encode`.

        Returns:
            [B, 3, T, h * f, w * f] float32 (nominally in [-1, 1]; not clipped).

        Raises:
            ValueError: z is not 5-D with `out_channels` channels.
        """
        b = self._check_input(z, self.out_channels, "VAE decode input z")[0]
        latents = rearrange(z, "B C T H W -> (B T) C H W")  # [B*T, C_latent, h, w]
        frames = []
        for start, stop in self._chunks(latents.shape[0]):
            frames.append(self.module.decode(latents[start:stop] / self.scaling_factor).sample)
        x = paddle.concat(frames, axis=0)  # [B*T, 3, H, W]
        return rearrange(x, "(B T) C H W -> B C T H W", B=b)
