"""Shared test helpers: the fixture folder and the repository root on sys.path."""
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from utils.cpu import configure_cpu_runtime  # noqa: E402  (before paddle is imported)

configure_cpu_runtime()

FIXTURES = os.path.join(os.path.dirname(ROOT), "shared", "fixtures")


@pytest.fixture(scope="session")
def fixtures_dir():
    """Path of `../shared/fixtures` (read in place, never copied). Fails, never skips, if absent."""
    if not os.path.isdir(FIXTURES):
        raise FileNotFoundError(
            f"test fixtures not found at {FIXTURES}: the shared/ folder must sit beside the checkout"
        )
    return FIXTURES


@pytest.fixture
def tiny_inference_config(tmp_path, fixtures_dir):
    """Path of an inference config JSON with the fixture VAE / T5 and a tiny random STDiT3 (saved
    beside it): 16 frames of 64x64, 2 rflow steps. Its outputs are meaningless, its shapes real."""
    import json

    import paddle

    from models.stdit import STDiT3

    paddle.seed(0)
    STDiT3(depth=1, hidden_size=48, num_heads=2, caption_channels=64, model_max_length=12,
           input_sq_size=64).save_pretrained(str(tmp_path / "stdit3"))
    hf = os.path.join(fixtures_dir, "hf_tiny")
    config = {
        "model": {"type": "STDiT3", "from_pretrained": "stdit3"},
        "vae": {"type": "VideoAutoencoderKL", "from_pretrained": os.path.join(hf, "vae_diffusers")},
        "text_encoder": {"type": "t5", "from_pretrained": os.path.join(hf, "t5_hf"),
                         "tokenizer_path": os.path.join(hf, "spm", "spiece.model"), "model_max_length": 12},
        "scheduler": {"type": "rflow"},
        "generation": {"num_frames": 16, "image_size": [64, 64], "fps": 8, "num_sampling_steps": 2},
    }
    path = tmp_path / "tiny.json"
    path.write_text(json.dumps(config))
    return str(path)
