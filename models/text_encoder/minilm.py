"""MiniLM-L6 text encoder (frozen): a small BERT written out in Paddle, with paddlenlp's `BertTokenizer`.

The embedded default model conditions on the per-token states of the pretrained MiniLM-L6 sentence
encoder (`all-MiniLM-L6-v2`: BERT, 6 layers, 384-d, 12 heads), read from a transformers-format folder
(`config.json`, `model.safetensors`, `vocab.txt`). It has the same surface as `T5Encoder`:
`encode(texts) -> dict(y=[B, 1, L, C], mask=[B, L])`, `tokenize`, `output_dim`, `model_max_length`.

The BERT forward is written here rather than taken from paddlenlp's `BertModel`, so that every
convention the checkpoint was trained with is visible in one place:
    embeddings  = LayerNorm(word[ids] + position[0..L-1] + token_type[0])
    each layer  = x = LayerNorm(x + Attn(x) W_o)         (post-norm, eps from config: 1e-12)
                  x = LayerNorm(x + GELU_erf(x W_1) W_2)
    attention   = softmax(q k^T / sqrt(d_head) + bias) v,  bias = float32 min on padded keys
Parameter names are the checkpoint's own (`encoder.layer.0.attention.self.query.weight`, ...), so
loading is a transpose of Linear weights ([out, in] -> [in, out]) and nothing else. There is no
dropout, so the output does not depend on train / eval mode. The pooler and the sentence-transformers
mean pooling are not used: the DiT's caption embedder takes the per-token states with the mask.

Local context (optional, off by default): MiniLM's per-token states are mostly the word itself, so
in "the digit 8 moves left and the digit 1 moves down" the state at "8" hardly tells which direction
follows it (`benchmarks/caption_binding.py`), and the DiT's cross-attention, which has no position
code over caption tokens, receives the caption nearly as a bag of words. With `context_window=k`,
`encode` mixes each token's state with the masked mean of the states within k tokens of it
(`add_local_context`), so the state at "8" carries "left" and the state at "left" carries "8". This
is a fixed, parameter-free step after the BERT; `forward` is the plain BERT either way.
"""
import json
import math
import os

import numpy as np
import paddle
import paddle.nn.functional as F
from paddle import nn
from paddlenlp.transformers import BertTokenizer

from utils.safetensors_io import read_header, read_tensor

__all__ = ["MiniLMEncoder", "add_local_context"]

_CONFIG = "config.json"
_WEIGHTS = "model.safetensors"
_VOCAB = "vocab.txt"
_TOKENIZER_CONFIG = "tokenizer_config.json"  # optional: lower-casing / accent settings
# Tensors of a transformers `BertModel` checkpoint that the per-token encoder has no use for.
_UNUSED_KEYS = ("embeddings.position_ids", "pooler.dense.weight", "pooler.dense.bias")
# The tokenizer settings read from tokenizer_config.json, with BERT-uncased defaults.
_TOKENIZER_DEFAULTS = {"do_lower_case": True, "tokenize_chinese_chars": True, "strip_accents": None}


# --------------------------------------------------------------------------- config
def _read_config(path):
    """`path/config.json` as a dict, rejecting BERT variants this encoder does not implement."""
    config_file = os.path.join(path, _CONFIG)
    with open(config_file, "r", encoding="utf-8") as f:
        try:
            config = json.load(f)
        except json.JSONDecodeError as err:
            raise ValueError(f"MiniLM config {config_file!r} is not valid JSON: {err}") from None
    required = (
        "vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
        "max_position_embeddings", "type_vocab_size", "layer_norm_eps",
    )  # fmt: skip
    missing = [key for key in required if key not in config]
    if missing:
        raise ValueError(f"MiniLM config {config_file!r} lacks {missing}")
    unsupported = {
        "model_type": (config.get("model_type", "bert"), "bert"),
        "hidden_act": (config.get("hidden_act", "gelu"), "gelu"),  # transformers' "gelu" is the erf form
        "position_embedding_type": (config.get("position_embedding_type", "absolute"), "absolute"),
    }
    wrong = {k: v for k, (v, want) in unsupported.items() if v != want}
    if wrong:
        raise ValueError(
            f"MiniLM config {config_file!r} has {wrong}; this encoder implements "
            f"{ {k: want for k, (_, want) in unsupported.items()} }"
        )
    if config["hidden_size"] % config["num_attention_heads"]:
        raise ValueError(
            f"MiniLM config {config_file!r}: hidden_size {config['hidden_size']} is not a multiple of "
            f"num_attention_heads {config['num_attention_heads']}"
        )
    return config


def _read_tokenizer_settings(path):
    """Lower-casing and accent settings from the optional `tokenizer_config.json` (BERT-uncased defaults)."""
    settings = dict(_TOKENIZER_DEFAULTS)
    config_file = os.path.join(path, _TOKENIZER_CONFIG)
    if os.path.isfile(config_file):
        with open(config_file, "r", encoding="utf-8") as f:
            raw = json.load(f)
        settings.update({k: raw[k] for k in _TOKENIZER_DEFAULTS if k in raw})
    return settings


# --------------------------------------------------------------------------- BERT layers
class _BertEmbeddings(nn.Layer):
    def __init__(self, config):
        super().__init__()
        width = config["hidden_size"]
        self.word_embeddings = nn.Embedding(config["vocab_size"], width)
        self.position_embeddings = nn.Embedding(config["max_position_embeddings"], width)
        self.token_type_embeddings = nn.Embedding(config["type_vocab_size"], width)
        self.LayerNorm = nn.LayerNorm(width, epsilon=config["layer_norm_eps"])

    def forward(self, input_ids):
        length = input_ids.shape[1]
        positions = paddle.arange(length, dtype="int64").unsqueeze(0)  # [1, L]
        token_types = paddle.zeros_like(input_ids)  # one segment: type 0
        x = self.word_embeddings(input_ids) + self.position_embeddings(positions)
        x = x + self.token_type_embeddings(token_types)  # [B, L, C]
        return self.LayerNorm(x)


class _BertLayer(nn.Layer):
    """One post-norm transformer layer, its sublayers named as in the transformers checkpoint."""

    def __init__(self, config):
        super().__init__()
        width, hidden, eps = config["hidden_size"], config["intermediate_size"], config["layer_norm_eps"]
        self.num_heads = config["num_attention_heads"]
        projections = nn.LayerDict({name: nn.Linear(width, width) for name in ("query", "key", "value")})
        attention_out = nn.LayerDict({"dense": nn.Linear(width, width), "LayerNorm": nn.LayerNorm(width, epsilon=eps)})
        self.attention = nn.LayerDict({"self": projections, "output": attention_out})
        self.intermediate = nn.LayerDict({"dense": nn.Linear(width, hidden)})
        self.output = nn.LayerDict({"dense": nn.Linear(hidden, width), "LayerNorm": nn.LayerNorm(width, epsilon=eps)})

    def _heads(self, x):
        batch, length, width = x.shape
        x = x.reshape([batch, length, self.num_heads, width // self.num_heads])  # [B, L, H, D]
        return x.transpose([0, 2, 1, 3])  # [B, H, L, D]

    def forward(self, x, key_bias):
        """x: [B, L, C]; key_bias: [B, 1, 1, L] additive attention bias (0 or float32 min)."""
        proj = self.attention["self"]
        q, k, v = self._heads(proj["query"](x)), self._heads(proj["key"](x)), self._heads(proj["value"](x))
        scores = paddle.matmul(q, k, transpose_y=True) / math.sqrt(q.shape[-1]) + key_bias  # [B, H, L, L]
        context = paddle.matmul(F.softmax(scores, axis=-1), v)  # [B, H, L, D]
        batch, heads, length, depth = context.shape
        context = context.transpose([0, 2, 1, 3]).reshape([batch, length, heads * depth])  # [B, L, C]
        out = self.attention["output"]
        x = out["LayerNorm"](x + out["dense"](context))
        ffn = self.output["dense"](F.gelu(self.intermediate["dense"](x), approximate=False))
        return self.output["LayerNorm"](x + ffn)  # [B, L, C]


class _BertStack(nn.Layer):
    def __init__(self, config):
        super().__init__()
        self.layer = nn.LayerList([_BertLayer(config) for _ in range(config["num_hidden_layers"])])

    def forward(self, x, key_bias):
        for layer in self.layer:
            x = layer(x, key_bias)
        return x


# --------------------------------------------------------------------------- weights
def _load_weights(model, weights_file):
    """Copy the checkpoint's tensors into `model`, transposing Linear weights to Paddle's [in, out].

    Raises:
        ValueError: the file is not in transformers (PyTorch) layout, has missing / unexpected keys,
            or tensors of the wrong shape (all offending names listed).
    """
    header, metadata, start = read_header(weights_file)
    if metadata.get("format") != "pt":
        raise ValueError(
            f"safetensors file {weights_file!r} has metadata format {metadata.get('format')!r}; this loader "
            "reads transformers checkpoints (format 'pt', Linear weights stored [out, in])"
        )
    params = model.state_dict()
    linear_weights = {f"{name}.weight" for name, layer in model.named_sublayers() if isinstance(layer, nn.Linear)}
    missing = sorted(set(params) - set(header))
    unexpected = sorted(set(header) - set(params) - set(_UNUSED_KEYS))
    if missing or unexpected:
        raise ValueError(
            f"MiniLM checkpoint {weights_file!r} does not match the BERT built from config.json: "
            f"missing keys {missing}, unexpected keys {unexpected}"
        )
    mismatched = []
    for name, param in params.items():
        value = read_tensor(weights_file, name, header, start)
        if not np.issubdtype(value.dtype, np.floating):
            mismatched.append(f"{name}: dtype {value.dtype}, a float dtype is required")
            continue
        if name in linear_weights:
            value = value.T  # [out, in] -> [in, out]
        if list(value.shape) != list(param.shape):
            mismatched.append(f"{name}: checkpoint {list(value.shape)} vs model {list(param.shape)}")
            continue
        param.set_value(np.ascontiguousarray(value, dtype=np.float32))
    if mismatched:
        raise ValueError(f"MiniLM checkpoint {weights_file!r} has tensors that do not fit: " + "; ".join(mismatched))


def _resolve_vocab(path, tokenizer_path):
    if tokenizer_path is None:
        return os.path.join(path, _VOCAB)
    candidate = os.fspath(tokenizer_path)
    if os.path.isdir(candidate):
        candidate = os.path.join(candidate, _VOCAB)
    if not os.path.isfile(candidate):
        raise FileNotFoundError(f"MiniLM tokenizer file {candidate!r} not found (a WordPiece vocab.txt is needed)")
    return candidate


# --------------------------------------------------------------------------- local context
def add_local_context(states, mask, window, weight):
    """Mix each token's state with the mean of its neighbours' (the encoder's `context_window` option).

        out[b, i] = (1 - weight) * states[b, i] + weight * mean{ states[b, j] : |i - j| <= window, mask[b, j] = 1 }

    Args:
        states: [B, L, C] float32 per-token states.
        mask: [B, L] int64 (or bool / float), 1 for tokens, 0 for padding; padded states never enter
            a mean (a padded position gets the mean of the real tokens in its window, or keeps its own
            state if there are none; the DiT ignores padded positions through the mask).
        window: int >= 1, neighbours on each side (the token itself is in its own mean).
        weight: float in (0, 1], the share of the mean.

    Returns:
        [B, L, C] float32.
    """
    length = states.shape[1]
    positions = paddle.arange(length, dtype="float32")
    band = (paddle.abs(positions.unsqueeze(1) - positions.unsqueeze(0)) <= window).astype("float32")  # [L, L]
    weights = band.unsqueeze(0) * mask.astype("float32").unsqueeze(1)  # [B, L(i), L(j)]
    counts = weights.sum(axis=-1, keepdim=True)  # [B, L, 1]
    mean = paddle.matmul(weights, states) / paddle.clip(counts, min=1.0)  # [B, L, C]
    mean = paddle.where(counts > 0, mean, states)
    return (1.0 - weight) * states + weight * mean


def _check_context(window, weight):
    is_int = isinstance(window, int) and not isinstance(window, bool)
    if not is_int or window < 0:
        raise ValueError(f"context_window must be an int >= 0 (0 = off), got {window!r}")
    is_number = isinstance(weight, (int, float)) and not isinstance(weight, bool)
    if not is_number or not 0.0 < float(weight) <= 1.0:
        raise ValueError(f"context_weight must be a number in (0, 1], got {weight!r}")


# --------------------------------------------------------------------------- the encoder
class MiniLMEncoder(nn.Layer):
    """Frozen MiniLM-L6 (BERT) encoder that turns captions into the DiT's `y` and `mask`.

    Args:
        config: the transformers BERT config (dict, as in config.json).
        tokenizer: a paddlenlp `BertTokenizer` over the model's vocab.txt.
        model_max_length: token length every caption is padded / truncated to, [CLS] and [SEP]
            included.
        context_window: 0 (default) returns the plain BERT states; k >= 1 mixes each token's state
            with the mean of the states within k tokens of it (`add_local_context`), in `encode`.
        context_weight: the mean's share in (0, 1] when context_window > 0 (default 0.5).

    Raises:
        ValueError: model_max_length is not an int in [2, max_position_embeddings], the vocabulary
            is larger than the embedding table, context_window is not an int >= 0 or context_weight
            not in (0, 1].

    Built with random weights; `from_pretrained` loads the checkpoint. Parameters are frozen
    (`stop_gradient=True`) and the layer is put in eval mode; having no dropout, its output is the
    same in train mode (a parent's `.train()` switches every sublayer).
    """

    def __init__(self, config, tokenizer, model_max_length=32, context_window=0, context_weight=0.5):
        super().__init__()
        _check_context(context_window, context_weight)
        limit = config["max_position_embeddings"]
        is_int = isinstance(model_max_length, int) and not isinstance(model_max_length, bool)
        if not is_int or not 2 <= model_max_length <= limit:
            raise ValueError(
                f"model_max_length must be an int in [2, {limit}] ([CLS] and [SEP] included), got {model_max_length!r}"
            )
        if len(tokenizer.vocab) > config["vocab_size"]:
            raise ValueError(
                f"tokenizer vocabulary has {len(tokenizer.vocab)} tokens, more than the model's "
                f"vocab_size {config['vocab_size']}"
            )
        self.config = dict(config)
        self.tokenizer = tokenizer
        self.model_max_length = model_max_length
        self.context_window = context_window
        self.context_weight = float(context_weight)
        self.embeddings = _BertEmbeddings(config)
        self.encoder = _BertStack(config)
        self.eval()
        for param in self.parameters():
            param.stop_gradient = True

    @classmethod
    def from_pretrained(cls, path, model_max_length=32, tokenizer_path=None, context_window=0, context_weight=0.5):
        """Load the encoder and tokenizer from a transformers-format folder; nothing is written into it.

        Args:
            path: folder with `config.json`, `model.safetensors` (transformers layout) and `vocab.txt`
                (optional `tokenizer_config.json`: `do_lower_case`, `strip_accents`,
                `tokenize_chinese_chars`), e.g. `utils.assets.minilm_dir()`.
            model_max_length, context_window, context_weight: see the class.
            tokenizer_path: `vocab.txt` or a folder holding it; default `path/vocab.txt`.

        Returns:
            MiniLMEncoder in eval mode, parameters frozen.

        Raises:
            FileNotFoundError: the folder or any of its required files is missing (all named).
            ValueError: the config describes a BERT variant not implemented here, the checkpoint has
                missing / unexpected keys or wrongly shaped tensors (all named), or see the class.
        """
        path = os.fspath(path)
        if not os.path.isdir(path):
            raise FileNotFoundError(
                f"MiniLM folder {path!r} does not exist or is not a directory; expected {_CONFIG}, {_WEIGHTS}, {_VOCAB}"
            )
        required = [_CONFIG, _WEIGHTS] + ([_VOCAB] if tokenizer_path is None else [])
        missing = [name for name in required if not os.path.isfile(os.path.join(path, name))]
        if missing:
            raise FileNotFoundError(f"MiniLM folder {path!r} lacks {missing}")
        config = _read_config(path)
        tokenizer = BertTokenizer(vocab_file=_resolve_vocab(path, tokenizer_path), **_read_tokenizer_settings(path))
        encoder = cls(config, tokenizer, model_max_length, context_window, context_weight)
        _load_weights(encoder, os.path.join(path, _WEIGHTS))
        return encoder

    @property
    def output_dim(self):
        """Width C of the caption features (hidden_size; 384 for MiniLM-L6)."""
        return self.config["hidden_size"]

    def forward(self, input_ids, attention_mask):
        """Last hidden states of token ids.

        Args:
            input_ids: [B, L] int64 token ids.
            attention_mask: [B, L] int64, 1 for tokens, 0 for padding (padded keys are not attended to;
                padded positions still get states, which the DiT ignores through the mask).

        Returns:
            [B, L, C] float32.
        """
        key_bias = (1.0 - attention_mask.astype("float32")) * float(np.finfo(np.float32).min)
        key_bias = key_bias.unsqueeze([1, 2])  # [B, 1, 1, L]
        return self.encoder(self.embeddings(input_ids), key_bias)

    def tokenize(self, texts):
        """Token ids and mask of `texts`: [CLS] ... [SEP], truncated / padded with [PAD] to `model_max_length`.

        Returns:
            (input_ids [B, L] int64, attention_mask [B, L] int64) as numpy arrays, L = model_max_length.

        Raises:
            ValueError: texts is not a non-empty list of str.
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
        return np.asarray(tokens["input_ids"], dtype=np.int64), np.asarray(tokens["attention_mask"], dtype=np.int64)

    def encode(self, texts):
        """Encode captions for the DiT.

        Args:
            texts: list of B caption strings.

        Returns:
            dict(y=[B, 1, L, C] float32 per-token states (with the local context when
            context_window > 0), mask=[B, L] int64 attention mask), L = model_max_length, C = output_dim.

        Raises:
            ValueError: see `tokenize`.
        """
        ids, mask = self.tokenize(texts)
        mask = paddle.to_tensor(mask)
        with paddle.no_grad():
            y = self.forward(paddle.to_tensor(ids), mask)  # [B, L, C]
            if self.context_window:
                y = add_local_context(y, mask, self.context_window, self.context_weight)
        return dict(y=y.unsqueeze(1), mask=mask)  # y: [B, 1, L, C]
