"""T5 v1.1 text encoder (frozen) for Open-Sora, over paddlenlp's `T5EncoderModel` and `T5Tokenizer`.

Follows upstream Open-Sora v1.1 / v1.2 `opensora/models/text_encoder/t5.py` (`T5Encoder`,
`T5Embedder.get_text_embeddings`): captions are tokenized with padding to `model_max_length`,
truncation and the end-of-sequence token, encoded, and returned as `y` [B, 1, L, C] with the
attention `mask` [B, L]. The null caption used for classifier-free guidance is not produced here:
it is the caption embedder's `y_embedding` inside the DiT.

Weights are read from a local folder without writing into it (paddlenlp's own
`convert_from_torch=True` writes a converted copy into the folder). A checkpoint whose tensors do
not cover the encoder exactly is rejected with the offending names.
"""
import json
import logging
import os

import numpy as np
import paddle
from paddlenlp.transformers import T5Config, T5EncoderModel, T5Tokenizer

from utils.safetensors_io import bf16_bits_to_float32, read_tensor

__all__ = ["T5Encoder", "load_t5_encoder_model"]

logger = logging.getLogger(__name__)

# paddlenlp's T5Attention buckets relative positions with max_distance fixed at 128.
_PADDLENLP_MAX_DISTANCE = 128
# feed_forward_proj -> activation paddlenlp applies (it ignores `dense_act_fn`).
_FEED_FORWARD_ACT = {"relu": "relu", "gated-gelu": "gelu_new", "gated-silu": "silu"}
# `encoder.embed_tokens` is the same embedding as `shared` (tied), so a checkpoint may hold either.
_TIED_ALIAS = ("encoder.embed_tokens.weight", "shared.weight")
# Keys of a full encoder-decoder T5 that an encoder has no place for; skipped with a log line.
_DECODER_PREFIXES = ("decoder.", "lm_head.")

_HF_SAFETENSORS = ("model.safetensors", "model.safetensors.index.json")
_PADDLE_PDPARAMS = "model_state.pdparams"
_HF_BIN = ("pytorch_model.bin", "pytorch_model.bin.index.json")


# --------------------------------------------------------------------------- config
def _read_t5_config(path):
    """Read `path/config.json` into a paddlenlp `T5Config`, rejecting settings paddlenlp would not honour."""
    config_file = os.path.join(path, "config.json")
    if not os.path.isfile(config_file):
        raise ValueError(f"T5 folder {path!r} has no config.json")
    with open(config_file, "r", encoding="utf-8") as f:
        try:
            raw = json.load(f)
        except json.JSONDecodeError as err:
            raise ValueError(f"T5 config {config_file!r} is not valid JSON: {err}") from None
    model_type = raw.get("model_type", "t5")
    if model_type != "t5":
        raise ValueError(f"T5 config {config_file!r} has model_type {model_type!r}; only 't5' is accepted")
    proj = raw.get("feed_forward_proj", "relu")
    if proj not in _FEED_FORWARD_ACT:
        raise ValueError(
            f"T5 config {config_file!r} has feed_forward_proj {proj!r}; accepted: {sorted(_FEED_FORWARD_ACT)}"
        )
    act = raw.get("dense_act_fn", _FEED_FORWARD_ACT[proj])
    if act != _FEED_FORWARD_ACT[proj]:
        raise ValueError(
            f"T5 config {config_file!r} pairs feed_forward_proj {proj!r} with dense_act_fn {act!r}; paddlenlp "
            f"only implements {proj!r} with {_FEED_FORWARD_ACT[proj]!r}"
        )
    distance = raw.get("relative_attention_max_distance", _PADDLENLP_MAX_DISTANCE)
    if distance != _PADDLENLP_MAX_DISTANCE:
        raise ValueError(
            f"T5 config {config_file!r} has relative_attention_max_distance {distance!r}; paddlenlp's T5 only "
            f"implements {_PADDLENLP_MAX_DISTANCE}"
        )
    kwargs = {k: v for k, v in raw.items() if k not in ("dtype", "torch_dtype")}
    kwargs["dtype"] = "float32"  # the encoder is built and run in float32
    # Frozen encoder: no dropout, so its output does not depend on train / eval mode (a parent
    # layer's `.train()` switches every sublayer, this one included).
    kwargs["dropout_rate"] = 0.0
    return T5Config(**kwargs)


# --------------------------------------------------------------------------- checkpoint reading
_bf16_bits_to_float32 = bf16_bits_to_float32


class _Checkpoint:
    """The tensors of one T5 folder, read lazily by name.

    `torch_layout` tells whether Linear weights are stored [out, in] (PyTorch / HF) or
    [in, out] (Paddle).
    """

    def __init__(self, path):
        self.path = path
        files = set(os.listdir(path))
        self._handles = {}
        self._arrays = None
        if files & set(_HF_SAFETENSORS):
            self._init_safetensors()
        elif _PADDLE_PDPARAMS in files:
            self.source = _PADDLE_PDPARAMS
            self.torch_layout = False
            self._arrays = paddle.load(os.path.join(path, _PADDLE_PDPARAMS), return_numpy=True)
            self.key_to_file = {k: _PADDLE_PDPARAMS for k in self._arrays}
        elif files & set(_HF_BIN):
            self._init_torch_bin()
        else:
            raise ValueError(
                f"T5 folder {path!r} has no weight file; expected one of "
                f"{list(_HF_SAFETENSORS) + [_PADDLE_PDPARAMS] + list(_HF_BIN)}"
            )

    def _shard_files(self, single, index):
        if single in os.listdir(self.path):
            return [single]
        with open(os.path.join(self.path, index), "r", encoding="utf-8") as f:
            weight_map = json.load(f).get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise ValueError(f"index {os.path.join(self.path, index)!r} has no 'weight_map'")
        return sorted(set(weight_map.values()))

    def _init_safetensors(self):
        from safetensors import safe_open

        shards = self._shard_files(*_HF_SAFETENSORS)
        self.source = shards[0] if len(shards) == 1 else _HF_SAFETENSORS[1]
        self.key_to_file = {}
        layouts = set()
        for shard in shards:
            full = os.path.join(self.path, shard)
            if not os.path.isfile(full):
                raise ValueError(f"T5 checkpoint shard {full!r} (listed in the index) is missing")
            handle = safe_open(full, framework="np")
            fmt = (handle.metadata() or {}).get("format")
            if fmt == "pt":
                layouts.add(True)
            elif fmt in ("np", "pd"):
                layouts.add(False)
            else:
                raise ValueError(
                    f"safetensors file {full!r} has metadata format {fmt!r}; accepted: 'pt' (PyTorch / "
                    "transformers layout) or 'np' / 'pd' (paddlenlp layout)"
                )
            self._handles[shard] = handle
            for key in handle.keys():
                self.key_to_file[key] = shard
        if len(layouts) != 1:
            raise ValueError(f"T5 checkpoint shards in {self.path!r} mix PyTorch and Paddle layouts")
        self.torch_layout = layouts.pop()

    def _init_torch_bin(self):
        from paddlenlp.utils.serialization import load_torch

        shards = self._shard_files(*_HF_BIN)
        self.source = shards[0] if len(shards) == 1 else _HF_BIN[1]
        self.torch_layout = True
        self._arrays, self.key_to_file = {}, {}
        for shard in shards:
            full = os.path.join(self.path, shard)
            if not os.path.isfile(full):
                raise ValueError(f"T5 checkpoint shard {full!r} (listed in the index) is missing")
            for key, value in load_torch(full).items():
                self._arrays[key] = value
                self.key_to_file[key] = shard

    def keys(self):
        return set(self.key_to_file)

    def get(self, key):
        """float32 numpy array of `key`, in the file's own layout."""
        if self._arrays is not None:
            value = self._arrays[key]
            if isinstance(value, paddle.Tensor):
                value = value.numpy()
            value = np.asarray(value)
            if value.dtype == np.uint16:  # bfloat16 as raw bits (numpy has no bfloat16 type)
                value = _bf16_bits_to_float32(value)
        else:
            # raw reader: handles bfloat16, which the numpy backend of safetensors cannot
            value = read_tensor(os.path.join(self.path, self.key_to_file[key]), key)
        if not np.issubdtype(value.dtype, np.floating):
            raise ValueError(f"tensor {key!r} in {self.path!r} has dtype {value.dtype}; a float dtype is required")
        return value.astype(np.float32, copy=False)


def load_t5_encoder_model(path):
    """Build a paddlenlp `T5EncoderModel` from a local folder without writing into the folder.

    Args:
        path: folder with `config.json` and weights in one of these forms:
            `model.safetensors` (or sharded with `model.safetensors.index.json`) as transformers
            saves it (metadata format "pt") or as paddlenlp saves it (format "np");
            `model_state.pdparams` (paddlenlp); `pytorch_model.bin` (or sharded with its index).
            PyTorch-layout Linear weights ([out, in]) are transposed to Paddle's [in, out].

    Returns:
        T5EncoderModel in eval mode, float32, parameters frozen (`stop_gradient=True`), built with
        `dropout_rate=0` (the config's value only matters for training, which Open-Sora never does).

    Raises:
        ValueError: the folder or config.json is missing, the config has settings paddlenlp's T5
            does not implement, or the checkpoint has missing / unexpected keys or tensors of the
            wrong shape (all offending names are listed). Keys of a T5 decoder (`decoder.*`,
            `lm_head.*`) are skipped with a log line.
    """
    path = os.fspath(path)
    if not os.path.isdir(path):
        raise ValueError(
            f"T5 folder {path!r} does not exist or is not a directory; expected a folder with config.json "
            "and model.safetensors (or model_state.pdparams / pytorch_model.bin)"
        )
    config = _read_t5_config(path)
    ckpt = _Checkpoint(path)
    model = T5EncoderModel(config)
    params = model.state_dict()
    linear_weights = {
        f"{name}.weight" for name, layer in model.named_sublayers() if isinstance(layer, paddle.nn.Linear)
    }
    alias, target_of_alias = _TIED_ALIAS
    expected = set(params) - {alias}

    available = ckpt.keys()
    skipped = sorted(k for k in available if k.startswith(_DECODER_PREFIXES))
    available -= set(skipped)
    if skipped:
        logger.info("T5 checkpoint %s: skipped %d decoder tensors (encoder only)", path, len(skipped))
    source_of = {k: k for k in available if k in expected}
    if target_of_alias not in source_of and alias in available:
        source_of[target_of_alias] = alias
    missing = sorted(expected - set(source_of))
    unexpected = sorted(available - set(source_of.values()) - {alias})
    if missing or unexpected:
        raise ValueError(
            f"T5 checkpoint {os.path.join(path, ckpt.source)!r} does not match the encoder built from its "
            f"config: missing keys {missing}, unexpected keys {unexpected}"
        )

    mismatched = []
    for name in sorted(expected):
        value = ckpt.get(source_of[name])
        if ckpt.torch_layout and name in linear_weights:
            value = value.T  # [out, in] -> [in, out]
        want = list(params[name].shape)
        if list(value.shape) != want:
            mismatched.append(f"{source_of[name]}: checkpoint {list(value.shape)} vs model {want}")
            continue
        params[name].set_value(np.ascontiguousarray(value))
    if alias in available and source_of[target_of_alias] != alias:
        if not np.array_equal(ckpt.get(alias), params[target_of_alias].numpy()):
            mismatched.append(f"{alias}: differs from the tied {target_of_alias}")
    if mismatched:
        raise ValueError(
            f"T5 checkpoint {os.path.join(path, ckpt.source)!r} has tensors that do not fit the encoder: "
            + "; ".join(mismatched)
        )
    model.eval()
    for param in model.parameters():
        param.stop_gradient = True
    return model


def _resolve_spiece(path, tokenizer_path):
    candidate = path if tokenizer_path is None else os.fspath(tokenizer_path)
    if os.path.isdir(candidate):
        candidate = os.path.join(candidate, "spiece.model")
    if not os.path.isfile(candidate):
        hint = "" if tokenizer_path is not None else "; pass tokenizer_path (spiece.model or its folder)"
        raise ValueError(f"T5 tokenizer file {candidate!r} not found (a sentencepiece spiece.model is needed){hint}")
    return candidate


# --------------------------------------------------------------------------- the encoder
class T5Encoder(paddle.nn.Layer):
    """Frozen T5 encoder that turns captions into the DiT's `y` and `mask`.

    Args:
        model: a paddlenlp `T5EncoderModel` (see `load_t5_encoder_model`).
        tokenizer: a paddlenlp `T5Tokenizer`.
        model_max_length: token length every caption is padded / truncated to (Open-Sora 1.1: 200,
            1.2: 300).

    Raises:
        ValueError: model_max_length is not a positive int.

    Captions are encoded as given; clean them first with
    `models.text_encoder.caption_cleaning.text_preprocessing` where upstream does (dataset and
    inference scripts).
    """

    def __init__(self, model, tokenizer, model_max_length):
        super().__init__()
        if isinstance(model_max_length, bool) or not isinstance(model_max_length, int) or model_max_length <= 0:
            raise ValueError(
                f"model_max_length must be a positive int (200 for v1.1, 300 for v1.2), got {model_max_length!r}"
            )
        self.model = model
        self.tokenizer = tokenizer
        self.model_max_length = model_max_length

    @classmethod
    def from_pretrained(cls, path, model_max_length, tokenizer_path=None):
        """Load the encoder and tokenizer from local files.

        Args:
            path: T5 folder (see `load_t5_encoder_model`), e.g. `DeepFloyd/t5-v1_1-xxl` in HF format.
                Nothing is written into it.
            model_max_length: see the class.
            tokenizer_path: the sentencepiece `spiece.model` file or a folder holding it; default
                `path/spiece.model`.

        Returns:
            T5Encoder in eval mode, parameters frozen.

        Raises:
            ValueError: see `load_t5_encoder_model`; the spiece.model file is not found.
        """
        path = os.fspath(path)
        model = load_t5_encoder_model(path)
        tokenizer = T5Tokenizer(sentencepiece_model_file=_resolve_spiece(path, tokenizer_path))
        return cls(model, tokenizer, model_max_length)

    @property
    def output_dim(self):
        """Width C of the caption features (d_model; 4096 for t5-v1_1-xxl)."""
        return self.model.config.d_model

    def forward(self, input_ids, attention_mask):
        """Encoder hidden states of token ids.

        Args:
            input_ids: [B, L] int64 token ids.
            attention_mask: [B, L] int64, 1 for tokens, 0 for padding.

        Returns:
            [B, L, C] float32 last hidden state.
        """
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, return_dict=True)
        return out.last_hidden_state.astype(paddle.float32)

    def tokenize(self, texts):
        """Token ids and mask of `texts`, padded / truncated to `model_max_length`, with `</s>`.

        Returns:
            (input_ids [B, L] int64, attention_mask [B, L] int64) as numpy arrays, L = model_max_length.

        Raises:
            ValueError: texts is not a non-empty list of str, or a text produces a token id outside
                the model's vocabulary (e.g. an `<extra_id_N>` sentinel the checkpoint has no row for).
        """
        if isinstance(texts, str) or not isinstance(texts, (list, tuple)) or not texts:
            raise ValueError(f"texts must be a non-empty list of str, got {texts!r}")
        for text in texts:
            if not isinstance(text, str):
                raise ValueError(f"texts must be a list of str; got an item {text!r} of type {type(text).__name__}")
        tokens = self.tokenizer(
            list(texts),
            max_length=self.model_max_length,
            padding="max_length",
            truncation=True,
            return_attention_mask=True,
            add_special_tokens=True,
            return_tensors="np",
        )
        ids = np.asarray(tokens["input_ids"], dtype=np.int64)
        mask = np.asarray(tokens["attention_mask"], dtype=np.int64)
        vocab = self.model.config.vocab_size
        bad = sorted({i for i, row in enumerate(ids) if row.max() >= vocab or row.min() < 0})
        if bad:
            raise ValueError(
                f"caption(s) {[texts[i] for i in bad]!r} produce token ids outside the model vocabulary [0, {vocab})"
            )
        return ids, mask

    def encode(self, texts):
        """Encode captions for the DiT.

        Args:
            texts: list of B caption strings.

        Returns:
            dict(y=[B, 1, L, C] float32 caption features, mask=[B, L] int64 attention mask),
            L = model_max_length, C = output_dim.

        Raises:
            ValueError: see `tokenize`.
        """
        ids, mask = self.tokenize(texts)
        mask = paddle.to_tensor(mask)
        y = self.forward(paddle.to_tensor(ids), mask)  # [B, L, C]
        return dict(y=y.unsqueeze(1), mask=mask)  # y: [B, 1, L, C]
