"""Video VAE: a per-frame ppdiffusers AutoencoderKL (Open-Sora 1.1)."""
from .vae import SD_VAE_SCALING_FACTOR, VideoAutoencoderKL

__all__ = ["VideoAutoencoderKL", "SD_VAE_SCALING_FACTOR"]
