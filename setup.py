"""Open-Sora in PaddlePaddle: STDiT video diffusion transformers, VAE and text encoders."""
import os

from setuptools import setup


def read_requirements():
    here = os.path.dirname(os.path.abspath(__file__))
    with open(os.path.join(here, "requirements.txt")) as f:
        lines = [line.split("#")[0].strip() for line in f]
    return [line for line in lines if line and line.split("==")[0] not in ("pytest",)]


setup(
    name="opensora-paddle",
    version="0.1.0",
    description="Open-Sora (STDiT2 / STDiT3) video generation and training in PaddlePaddle",
    python_requires=">=3.9",
    packages=[
        "models",
        "models.layers",
        "models.stdit",
        "models.vae",
        "models.text_encoder",
        "schedulers",
        "utils",
        "trainer",
        "video_datasets",
    ],
    install_requires=read_requirements(),
    extras_require={"test": ["pytest==9.2.0"]},
)
