"""Paddle models of Open-Sora: STDiT transformers, the video VAE wrapper, the text encoders."""
