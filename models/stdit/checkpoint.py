"""Config + weights I/O shared by the STDiT models, and the upstream -> Paddle conversion table.

A model folder holds `config.json` (the constructor keywords, upstream names, plus `model_type`)
and `model.safetensors` (this project's Paddle layout: Linear weights are [in, out]). Upstream
PyTorch checkpoints differ only by the layout of Linear weights ([out, in]); the conversion is a
transposition of exactly those keys, found from the model's own layer types.
"""
import json
import os
import shutil
import tempfile

import numpy as np
import paddle
import paddle.nn as nn

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"

# keys a Hugging Face / upstream config.json carries that are bookkeeping, not model settings
HF_CONFIG_BOOKKEEPING = {
    "architectures",
    "model_type",
    "torch_dtype",
    "transformers_version",
    "_name_or_path",
    "auto_map",
}


def linear_weight_keys(model):
    """Names of the state-dict entries that are `nn.Linear` weights (stored transposed by torch)."""
    keys = set()
    for name, layer in model.named_sublayers():
        if isinstance(layer, nn.Linear):
            keys.add(f"{name}.weight")
    return keys


def expected_state(model):
    """{key: shape} of everything `model.state_dict()` holds (parameters + persistable buffers)."""
    return {k: list(v.shape) for k, v in model.state_dict().items()}


def check_state_keys(model, state, source):
    """Raise ValueError listing missing keys, unexpected keys and shape mismatches.

    Args:
        model: the Paddle model the state is for.
        state: {key: array-like with .shape} in the Paddle layout.
        source: a description of where the state came from (for the message).
    """
    expected = expected_state(model)
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    mismatched = [
        f"{k}: checkpoint {list(np.shape(state[k]))} vs model {expected[k]}"
        for k in sorted(set(expected) & set(state))
        if list(np.shape(state[k])) != expected[k]
    ]
    if missing or unexpected or mismatched:
        parts = []
        if missing:
            parts.append(f"missing keys ({len(missing)}): {', '.join(missing)}")
        if unexpected:
            parts.append(f"unexpected keys ({len(unexpected)}): {', '.join(unexpected)}")
        if mismatched:
            parts.append(f"shape mismatches ({len(mismatched)}): {'; '.join(mismatched)}")
        raise ValueError(f"checkpoint {source} does not fit {type(model).__name__}: " + " | ".join(parts))


STORAGE_DTYPES = ("float32", "float16")


def load_state(model, state, source):
    """Validate then copy a {key: numpy array} state (Paddle layout) into `model`.

    Floating-point arrays stored in another precision (a folder saved with `dtype="float16"`) are
    cast to the dtype of the model's tensor (float32 here); integer or boolean arrays are copied
    as they are.

    Raises:
        ValueError: missing / unexpected keys or a shape mismatch (`check_state_keys`).
    """
    check_state_keys(model, state, source)
    targets = model.state_dict()
    model.set_state_dict({
        k: paddle.to_tensor(np.ascontiguousarray(v), dtype=targets[k].dtype if np.issubdtype(v.dtype, np.floating) else None)
        for k, v in state.items()
    })
    return model


def upstream_to_paddle(model, upstream_state, source="upstream state dict"):
    """Convert an upstream PyTorch state dict (numpy arrays) into this port's layout.

    The table: identical names; `nn.Linear` weights transposed ([out, in] -> [in, out]);
    upstream's non-persistent buffers (`pos_embed.inv_freq`, `rope.cached_freqs`, `rope.dummy`)
    dropped if present. A leading `module.` (DDP wrapper) is removed when every key has it.

    Raises:
        ValueError: missing / unexpected keys or a shape mismatch, all listed.
    """
    state = dict(upstream_state)
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module.") :]: v for k, v in state.items()}
    for k in ("pos_embed.inv_freq", "rope.cached_freqs", "rope.dummy", "rope.cached_scales"):
        state.pop(k, None)
    linear = linear_weight_keys(model)
    out = {}
    for k, v in state.items():
        v = np.asarray(v)
        if k in linear:
            if v.ndim != 2:
                raise ValueError(f"{source}: {k} should be a 2-D Linear weight, got shape {list(v.shape)}")
            v = v.T
        out[k] = np.ascontiguousarray(v.astype(np.float32) if v.dtype != np.float32 else v)
    check_state_keys(model, out, source)
    return out


def save_folder(model, config, save_dir, model_type, dtype=None):
    """Write `config.json` + `model.safetensors` atomically (temporary folder, then rename).

    Args:
        dtype: None keeps each tensor's dtype; "float16" / "float32" stores the floating-point
            tensors in that precision (float16 halves the file; `load_state` casts back).

    Raises:
        ValueError: `dtype` is not one of STORAGE_DTYPES (nothing is written).
    """
    from safetensors.numpy import save_file

    if dtype is not None and dtype not in STORAGE_DTYPES:
        raise ValueError(f"storage dtype {dtype!r} is not supported; accepted: {list(STORAGE_DTYPES)}")
    save_dir = os.path.abspath(save_dir)
    parent = os.path.dirname(save_dir)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".tmp-" + os.path.basename(save_dir) + "-", dir=parent)
    try:
        state = {k: np.ascontiguousarray(v.numpy()) for k, v in model.state_dict().items()}
        if dtype is not None:
            state = {k: v.astype(dtype) if np.issubdtype(v.dtype, np.floating) else v for k, v in state.items()}
        save_file(state, os.path.join(tmp, WEIGHTS_NAME), metadata={"format": "paddle", "model_type": model_type})
        with open(os.path.join(tmp, CONFIG_NAME), "w") as f:
            json.dump(dict(config, model_type=model_type), f, indent=2)
        if os.path.isdir(save_dir):
            old = save_dir + ".old"
            shutil.rmtree(old, ignore_errors=True)
            os.rename(save_dir, old)
            os.rename(tmp, save_dir)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, save_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return save_dir


def read_folder(path, model_type):
    """Read a model folder written by `save_folder`: returns (config kwargs, state numpy dict).

    Raises:
        FileNotFoundError: the folder or one of its two files is missing.
        ValueError: the folder holds another model type.
    """
    from safetensors.numpy import load_file

    if not os.path.isdir(path):
        raise FileNotFoundError(f"model folder not found: {path!r} (expected a folder with {CONFIG_NAME} and {WEIGHTS_NAME})")
    for name in (CONFIG_NAME, WEIGHTS_NAME):
        if not os.path.isfile(os.path.join(path, name)):
            raise FileNotFoundError(f"{name} missing in model folder {path!r}")
    with open(os.path.join(path, CONFIG_NAME)) as f:
        config = json.load(f)
    found = config.pop("model_type", model_type)
    if found != model_type:
        raise ValueError(f"{path!r} holds a {found} model, not {model_type}")
    return config, load_file(os.path.join(path, WEIGHTS_NAME))


def load_upstream_state_dict(path):
    """Read an upstream checkpoint file into {key: float32 numpy array}.

    Accepts `.safetensors` (the released Hugging Face folders hold `model.safetensors`; float32,
    float16 or bfloat16, read without torch), or a
    PyTorch `.pt` / `.pth` / `.bin` state dict (needs torch installed; a dict holding the state
    under "model", "state_dict" or "module" is unwrapped).

    Raises:
        FileNotFoundError, ValueError (unknown format), ImportError (torch file without torch).
    """
    if os.path.isdir(path):
        cand = os.path.join(path, WEIGHTS_NAME)
        if not os.path.isfile(cand):
            raise FileNotFoundError(f"no {WEIGHTS_NAME} in {path!r}")
        path = cand
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint not found: {path!r}")
    if path.endswith(".safetensors"):
        from utils.safetensors_io import load_all

        return {k: v.astype(np.float32, copy=False) for k, v in load_all(path).items()}
    elif not path.endswith((".pt", ".pth", ".bin")):
        raise ValueError(f"unknown checkpoint format {path!r}: accepted .safetensors, .pt, .pth, .bin")
    try:
        import torch
    except ImportError as e:
        raise ImportError(f"reading {path!r} needs PyTorch (pip install torch); safetensors files do not") from e
    sd = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("model", "state_dict", "module"):
        if isinstance(sd, dict) and key in sd and isinstance(sd[key], dict):
            sd = sd[key]
    return {k: v.detach().float().cpu().numpy() for k, v in sd.items()}
