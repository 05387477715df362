"""MiniLMEncoder against a plain-numpy BERT forward of the shipped MiniLM-L6 weights, its tokenizer
against tokenizer.json's vocabulary, and the loader's errors."""
import json
import math
import os
import re
import unicodedata

import numpy as np
import paddle
import pytest
from safetensors.numpy import save_file

from models.text_encoder import MiniLMEncoder
from utils.assets import minilm_dir
from utils.safetensors_io import load_all

TOL = 1e-5  # measured 1.4e-6; 1e-5 also catches a wrong layer-norm epsilon (3.2e-5)
MAX_LEN = 32
CAPTIONS = [
    "the digit 3 moves right and the digit 8 moves down",
    "The digit 0 moves up.",
    "the digit 7 moves left, and the digit 1 moves up",
    "a handwritten five bounces around",
]
_FILES = ("config.json", "model.safetensors", "vocab.txt", "tokenizer_config.json")


def _snapshot(folder):
    return sorted((name, os.stat(os.path.join(folder, name)).st_size, os.stat(os.path.join(folder, name)).st_mtime_ns)
                  for name in os.listdir(folder))  # fmt: skip


@pytest.fixture(scope="module")
def model_dir():
    return minilm_dir()


@pytest.fixture(scope="module")
def folder_before(model_dir):
    return _snapshot(model_dir)


@pytest.fixture(scope="module")
def encoder(model_dir, folder_before):
    return MiniLMEncoder.from_pretrained(model_dir, model_max_length=MAX_LEN)


@pytest.fixture(scope="module")
def weights(model_dir):
    return {k: v.astype(np.float64) for k, v in load_all(os.path.join(model_dir, "model.safetensors")).items()}


@pytest.fixture(scope="module")
def config(model_dir):
    with open(os.path.join(model_dir, "config.json")) as f:
        return json.load(f)


@pytest.fixture(scope="module")
def vocab(model_dir):
    with open(os.path.join(model_dir, "tokenizer.json"), encoding="utf-8") as f:
        return json.load(f)["model"]["vocab"]


# --------------------------------------------------------------------------- numpy reference
_erf = np.vectorize(math.erf)


def _layer_norm(x, w, b, eps):
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * w + b


def _reference_bert(w, cfg, ids, mask):
    """transformers' BertModel last_hidden_state in numpy, float64 weights: ids, mask [B, L] -> [B, L, C]."""
    eps, heads = cfg["layer_norm_eps"], cfg["num_attention_heads"]
    batch, length = ids.shape

    def linear(v, name):
        return v @ w[name + ".weight"].T + w[name + ".bias"]

    def norm(v, name):
        return _layer_norm(v, w[name + ".weight"], w[name + ".bias"], eps)

    def split(v):  # [B, L, C] -> [B, H, L, D]
        return v.reshape(batch, length, heads, -1).transpose(0, 2, 1, 3)

    x = w["embeddings.word_embeddings.weight"][ids] + w["embeddings.position_embeddings.weight"][:length]
    x = norm(x + w["embeddings.token_type_embeddings.weight"][0], "embeddings.LayerNorm")  # [B, L, C]
    bias = np.where(mask[:, None, None, :] > 0, 0.0, -1e30)  # padded keys: large negative
    for i in range(cfg["num_hidden_layers"]):
        p = f"encoder.layer.{i}."
        q, k, v = (split(linear(x, p + "attention.self." + n)) for n in ("query", "key", "value"))
        scores = q @ k.transpose(0, 1, 3, 2) / math.sqrt(q.shape[-1]) + bias
        probs = np.exp(scores - scores.max(-1, keepdims=True))
        probs /= probs.sum(-1, keepdims=True)
        context = (probs @ v).transpose(0, 2, 1, 3).reshape(batch, length, -1)
        x = norm(x + linear(context, p + "attention.output.dense"), p + "attention.output.LayerNorm")
        h = linear(x, p + "intermediate.dense")
        h = 0.5 * h * (1.0 + _erf(h / math.sqrt(2.0)))  # exact GELU
        x = norm(x + linear(h, p + "output.dense"), p + "output.LayerNorm")
    return x


def _reference_wordpiece(text, vocab):
    """BERT-uncased tokenization of plain text straight from tokenizer.json's vocab (no CJK, no accents
    beyond what NFD + dropping combining marks removes)."""
    text = unicodedata.normalize("NFD", text.lower())
    text = "".join(c for c in text if unicodedata.category(c) != "Mn")
    words = re.findall(r"\w+|[^\w\s]", text)
    ids = [vocab["[CLS]"]]
    for word in words:
        start, pieces = 0, []
        while start < len(word):
            end = len(word)
            while end > start and (("##" if start else "") + word[start:end]) not in vocab:
                end -= 1
            if end == start:
                pieces = ["[UNK]"]
                break
            pieces.append(("##" if start else "") + word[start:end])
            start = end
        ids += [vocab[p] for p in pieces]
    return ids + [vocab["[SEP]"]]


# --------------------------------------------------------------------------- fidelity
def test_matches_numpy_reference(encoder, weights, config):
    out = encoder.encode(CAPTIONS)
    y, mask = out["y"].numpy(), out["mask"].numpy()
    assert y.shape == (len(CAPTIONS), 1, MAX_LEN, 384) and y.dtype == np.float32
    assert mask.shape == (len(CAPTIONS), MAX_LEN) and mask.dtype == np.int64
    ids, _ = encoder.tokenize(CAPTIONS)
    ref = _reference_bert(weights, config, ids, mask)
    valid = mask.astype(bool)
    diff = np.abs(y[:, 0][valid] - ref[valid]).max()
    assert diff <= TOL, f"max abs diff {diff:.3e} on valid tokens"


def test_padding_is_invisible(encoder, weights, config):
    """Each caption run alone at its own length (no padding, no mask) equals its padded batch row."""
    y = encoder.encode(CAPTIONS)["y"].numpy()[:, 0]
    ids, mask = encoder.tokenize(CAPTIONS)
    for row in range(len(CAPTIONS)):
        n = int(mask[row].sum())
        alone = _reference_bert(weights, config, ids[row : row + 1, :n], np.ones((1, n), np.int64))[0]
        assert np.abs(y[row, :n] - alone).max() <= TOL


def test_pretrained_semantics(encoder):
    """Mean-pooled states (the sentence-transformers embedding) rank a paraphrase above an unrelated caption."""
    out = encoder.encode(["the digit 3 moves right", "the number three goes to the right", "a cat sleeps on the sofa"])
    y, mask = out["y"].numpy()[:, 0], out["mask"].numpy()[..., None].astype(np.float32)
    emb = (y * mask).sum(1) / mask.sum(1)
    emb /= np.linalg.norm(emb, axis=-1, keepdims=True)
    assert emb[0] @ emb[1] > emb[0] @ emb[2] + 0.2


def test_frozen(encoder):
    assert all(p.stop_gradient for p in encoder.parameters()) and not encoder.training
    before = encoder.encode(CAPTIONS[:2])["y"].numpy()
    parent = paddle.nn.LayerList([encoder])
    parent.train()  # switches every sublayer: the output must not change (no dropout)
    try:
        assert np.array_equal(encoder.encode(CAPTIONS[:2])["y"].numpy(), before)
    finally:
        parent.eval()
    assert encoder.output_dim == 384 and encoder.model_max_length == MAX_LEN


# --------------------------------------------------------------------------- tokenizer
def test_tokenize_matches_vocab(encoder, vocab):
    ids, mask = encoder.tokenize(["The digit 3 moves right, and the digit 8 moves down!"])
    tokens = ["[CLS]", "the", "digit", "3", "moves", "right", ",", "and",
              "the", "digit", "8", "moves", "down", "!", "[SEP]"]  # fmt: skip
    n = len(tokens)
    assert ids[0, :n].tolist() == [vocab[t] for t in tokens]
    assert ids[0, :n].tolist() == [101, 1996, 15340, 1017, 5829, 2157, 1010, 1998,
                                   1996, 15340, 1022, 5829, 2091, 999, 102]  # fmt: skip
    assert (ids[0, n:] == vocab["[PAD]"]).all() and vocab["[PAD]"] == 0
    assert mask[0].tolist() == [1] * n + [0] * (MAX_LEN - n)
    # subwords, accents, mixed case and punctuation, against a greedy WordPiece over tokenizer.json
    texts = CAPTIONS + ["Zigzagging digits: a Café-style 9 spins counter-clockwise (slowly)."]
    ids, mask = encoder.tokenize(texts)
    for row, text in enumerate(texts):
        expected = _reference_wordpiece(text, vocab)
        assert ids[row, : len(expected)].tolist() == expected
        assert mask[row].sum() == len(expected)


def test_padding_and_truncation(encoder):
    short = MiniLMEncoder(encoder.config, encoder.tokenizer, model_max_length=8)  # random weights: tokenize only
    full, _ = encoder.tokenize([CAPTIONS[0]])
    ids, mask = short.tokenize([CAPTIONS[0], "up"])
    assert ids.shape == mask.shape == (2, 8) and ids.dtype == mask.dtype == np.int64
    assert ids[0].tolist() == full[0, :7].tolist() + [102]  # [CLS] + first 6 word pieces + [SEP]
    assert mask[0].tolist() == [1] * 8
    assert ids[1, :3].tolist() == [101, 2039, 102] and (ids[1, 3:] == 0).all()
    assert mask[1].tolist() == [1, 1, 1, 0, 0, 0, 0, 0]


# --------------------------------------------------------------------------- folder and errors
def test_folder_untouched(encoder, model_dir, folder_before):
    encoder.encode(CAPTIONS[:1])
    assert _snapshot(model_dir) == folder_before


def _linked_folder(tmp_path, model_dir, names=_FILES):
    folder = tmp_path / "minilm"
    folder.mkdir()
    for name in names:
        os.symlink(os.path.join(model_dir, name), folder / name)
    return folder


def _tiny_checkpoint(folder, vocab_size, drop=(), extra=(), fmt="pt", hidden_act="gelu", reshape=()):
    """A 1-layer, 8-wide BERT folder (HF naming, PyTorch layout) beside the real vocab."""
    cfg = dict(vocab_size=vocab_size, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
               intermediate_size=16, max_position_embeddings=16, type_vocab_size=2, layer_norm_eps=1e-12,
               hidden_act=hidden_act, model_type="bert")  # fmt: skip
    (folder / "config.json").write_text(json.dumps(cfg))
    shapes = {
        "embeddings.word_embeddings.weight": (vocab_size, 8), "embeddings.position_embeddings.weight": (16, 8),
        "embeddings.token_type_embeddings.weight": (2, 8),
        "embeddings.LayerNorm.weight": (8,), "embeddings.LayerNorm.bias": (8,),
    }  # fmt: skip
    p = "encoder.layer.0."
    for name, shape in [("attention.self.query", (8, 8)), ("attention.self.key", (8, 8)),
                        ("attention.self.value", (8, 8)), ("attention.output.dense", (8, 8)),
                        ("intermediate.dense", (16, 8)), ("output.dense", (8, 16))]:  # fmt: skip
        shapes[p + name + ".weight"], shapes[p + name + ".bias"] = shape, shape[:1]
    for name in ("attention.output.LayerNorm", "output.LayerNorm"):
        shapes[p + name + ".weight"], shapes[p + name + ".bias"] = (8,), (8,)
    shapes.update({name: (3,) for name in extra})
    shapes.update({name: shapes[name][::-1] for name in reshape})
    rng = np.random.default_rng(0)
    tensors = {k: rng.standard_normal(s).astype(np.float32) for k, s in shapes.items() if k not in drop}
    tensors["pooler.dense.weight"] = np.zeros((8, 8), np.float32)  # known and unused: accepted
    save_file(tensors, str(folder / "model.safetensors"), metadata={"format": fmt})


def test_read_only_copy_loads(tmp_path, model_dir):
    folder = _linked_folder(tmp_path, model_dir, ("vocab.txt",))
    _tiny_checkpoint(folder, vocab_size=30522)
    before = _snapshot(folder)
    os.chmod(folder, 0o555)
    try:
        enc = MiniLMEncoder.from_pretrained(folder, model_max_length=16)
        out = enc.encode(["the digit 4 moves left"])
    finally:
        os.chmod(folder, 0o755)
    assert tuple(out["y"].shape) == (1, 1, 16, 8) and enc.output_dim == 8
    assert _snapshot(folder) == before


def test_missing_files(tmp_path, model_dir):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        MiniLMEncoder.from_pretrained(tmp_path / "nowhere")
    folder = _linked_folder(tmp_path, model_dir, ("config.json",))
    with pytest.raises(FileNotFoundError, match=r"model\.safetensors.*vocab\.txt"):
        MiniLMEncoder.from_pretrained(folder)
    with pytest.raises(FileNotFoundError, match="vocab"):
        MiniLMEncoder.from_pretrained(model_dir, tokenizer_path=tmp_path)


def test_checkpoint_errors(tmp_path, model_dir):
    folder = _linked_folder(tmp_path, model_dir, ("vocab.txt",))
    _tiny_checkpoint(folder, 30522, drop=("encoder.layer.0.attention.self.key.bias",), extra=("bert.stray",))
    with pytest.raises(ValueError, match=r"missing keys \['encoder\.layer\.0\.attention\.self\.key\.bias'\], "
                                         r"unexpected keys \['bert\.stray'\]"):  # fmt: skip
        MiniLMEncoder.from_pretrained(folder, model_max_length=16)
    _tiny_checkpoint(folder, 30522, reshape=("encoder.layer.0.output.dense.weight",))
    with pytest.raises(ValueError, match=r"layer\.0\.output\.dense\.weight: checkpoint \[8, 16\] vs model \[16, 8\]"):
        MiniLMEncoder.from_pretrained(folder, model_max_length=16)
    _tiny_checkpoint(folder, 30522, fmt="np")
    with pytest.raises(ValueError, match="format 'np'"):
        MiniLMEncoder.from_pretrained(folder, model_max_length=16)
    _tiny_checkpoint(folder, 30522, hidden_act="relu")
    with pytest.raises(ValueError, match="hidden_act"):
        MiniLMEncoder.from_pretrained(folder, model_max_length=16)
    _tiny_checkpoint(folder, 100)
    with pytest.raises(ValueError, match="vocab_size 100"):
        MiniLMEncoder.from_pretrained(folder, model_max_length=16)
    _tiny_checkpoint(folder, 30522)
    with pytest.raises(ValueError, match="model_max_length"):
        MiniLMEncoder.from_pretrained(folder, model_max_length=17)  # max_position_embeddings is 16


def test_bad_inputs(encoder):
    for texts in ("a caption", [], ["ok", 3]):
        with pytest.raises(ValueError, match="texts must be"):
            encoder.encode(texts)
    for length in (1, True, 513, 32.0):
        with pytest.raises(ValueError, match="model_max_length"):
            MiniLMEncoder(encoder.config, encoder.tokenizer, model_max_length=length)


# --------------------------------------------------------------------------- local context option
def _reference_context(y, mask, window, weight):
    """add_local_context in numpy: y [B, L, C], mask [B, L] -> [B, L, C]."""
    out = y.copy()
    for b in range(y.shape[0]):
        for i in range(y.shape[1]):
            near = [j for j in range(y.shape[1]) if abs(i - j) <= window and mask[b, j]]
            if near:
                out[b, i] = (1 - weight) * y[b, i] + weight * y[b, near].mean(0)
    return out


def test_local_context_matches_numpy(model_dir, encoder):
    """context_window=k: encode = the plain BERT states mixed with their masked window means."""
    plain = encoder.encode(CAPTIONS)
    mixed = MiniLMEncoder.from_pretrained(model_dir, model_max_length=MAX_LEN, context_window=2, context_weight=0.6)
    out = mixed.encode(CAPTIONS)
    assert np.array_equal(out["mask"].numpy(), plain["mask"].numpy())
    y, mask = plain["y"].numpy()[:, 0], plain["mask"].numpy()
    ref = _reference_context(y.astype(np.float64), mask, 2, 0.6)
    assert np.abs(out["y"].numpy()[:, 0] - ref).max() <= 1e-4
    assert np.abs(out["y"].numpy()[:, 0] - y)[mask.astype(bool)].max() > 0.5  # it does change the states
    # the pairing reaches the digit: "8" followed by "left" vs by "down" differs more with the context
    texts = ["the digit 8 moves left and the digit 1 moves down", "the digit 8 moves down and the digit 1 moves left"]
    digit = 3  # [CLS] the digit 8
    change = []
    for enc in (encoder, mixed):
        a, b = enc.encode(texts)["y"].numpy()[:, 0, digit]
        change.append(np.linalg.norm(a - b) / np.linalg.norm(a))
    assert change[1] > 1.3 * change[0], change  # measured 0.196 against 0.134


def test_local_context_ignores_padding():
    """Padded states never enter a mean; a window without tokens keeps its states."""
    from models.text_encoder import add_local_context

    rng = np.random.default_rng(0)
    y = rng.normal(size=(2, 6, 4)).astype(np.float32)
    mask = np.array([[1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 1]], np.int64)
    out = add_local_context(paddle.to_tensor(y), paddle.to_tensor(mask), 1, 1.0).numpy()
    assert np.allclose(out, _reference_context(y, mask, 1, 1.0), atol=1e-6)
    y2 = y.copy()
    y2[0, 3:] = 1e6  # other padded states: the token outputs must not move
    out2 = add_local_context(paddle.to_tensor(y2), paddle.to_tensor(mask), 1, 1.0).numpy()
    assert np.allclose(out2[0, :3], out[0, :3], atol=1e-6)
    assert np.allclose(out[0, 1], y[0, :3].mean(0), atol=1e-6)
    assert np.allclose(out[0, 5], y[0, 5])  # no token within 1 of position 5: kept


def test_local_context_bad_options(encoder):
    for window in (-1, 1.5, True):
        with pytest.raises(ValueError, match="context_window"):
            MiniLMEncoder(encoder.config, encoder.tokenizer, context_window=window)
    for weight in (0, 1.5, -0.1, "0.5"):
        with pytest.raises(ValueError, match="context_weight"):
            MiniLMEncoder(encoder.config, encoder.tokenizer, context_window=2, context_weight=weight)
