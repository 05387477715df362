"""T5Encoder against the transformers reference run of the tiny fixture T5, and caption cleaning."""
import json
import os
import pickle
import shutil
import struct
import warnings
import zipfile

import numpy as np
import paddle
import pytest
from paddlenlp.transformers import T5Config, T5EncoderModel
from safetensors.numpy import load_file, save_file

from models.text_encoder import (
    CaptionCleaningWarning,
    NonLatinCaptionWarning,
    T5Encoder,
    clean_caption,
    text_preprocessing,
)

TOL = 1e-4
MAX_LEN = 16


@pytest.fixture(scope="module")
def t5_dir(fixtures_dir):
    return os.path.join(fixtures_dir, "hf_tiny", "t5_hf")


@pytest.fixture(scope="module")
def spiece(fixtures_dir):
    return os.path.join(fixtures_dir, "hf_tiny", "spm", "spiece.model")


@pytest.fixture(scope="module")
def ref(fixtures_dir):
    return dict(np.load(os.path.join(fixtures_dir, "hf_tiny", "t5_hf_ref.npz")))


@pytest.fixture(scope="module")
def encoder(t5_dir, spiece):
    return T5Encoder.from_pretrained(t5_dir, model_max_length=MAX_LEN, tokenizer_path=spiece)


@pytest.fixture(scope="module")
def hf_weights(t5_dir):
    return load_file(os.path.join(t5_dir, "model.safetensors"))


def _hidden(enc, ref):
    return enc(paddle.to_tensor(ref["ids"]), paddle.to_tensor(ref["mask"])).numpy()


def _folder(tmp_path, t5_dir, spiece, name="t5"):
    """A fresh model folder holding a copy of the fixture config and the tokenizer."""
    folder = tmp_path / name
    folder.mkdir()
    shutil.copy(os.path.join(t5_dir, "config.json"), folder / "config.json")
    shutil.copy(spiece, folder / "spiece.model")
    return folder


def _write_torch_bin(path, arrays, bf16=False):
    """Write `arrays` in PyTorch's zip checkpoint format (what `torch.save` produces), without torch."""
    out = bytearray([pickle.PROTO[0], 2])

    def text(s):
        data = s.encode()
        out.extend(pickle.BINUNICODE + struct.pack("<I", len(data)) + data)

    def integer(i):
        out.extend(pickle.BININT + struct.pack("<i", i))

    def global_(module, name):
        out.extend(pickle.GLOBAL + f"{module}\n{name}\n".encode())

    def ints(values):
        out.extend(pickle.MARK)
        for v in values:
            integer(v)
        out.extend(pickle.TUPLE)

    storages = {}
    global_("collections", "OrderedDict")
    out.extend(pickle.EMPTY_TUPLE + pickle.REDUCE)
    for index, (key, array) in enumerate(arrays.items()):
        array = np.ascontiguousarray(array, dtype=np.float32)
        if bf16:
            storages[str(index)] = (array.view(np.uint32) >> 16).astype(np.uint16).tobytes()
        else:
            storages[str(index)] = array.tobytes()
        text(key)
        global_("torch._utils", "_rebuild_tensor_v2")
        out.extend(pickle.MARK)
        out.extend(pickle.MARK)  # persistent id: ('storage', type, key, location, numel)
        text("storage")
        global_("torch", "BFloat16Storage" if bf16 else "FloatStorage")
        text(str(index))
        text("cpu")
        integer(array.size)
        out.extend(pickle.TUPLE + pickle.BINPERSID)
        integer(0)
        ints(array.shape)
        ints([int(np.prod(array.shape[i + 1 :])) for i in range(array.ndim)])
        out.extend(pickle.NEWFALSE)
        global_("collections", "OrderedDict")
        out.extend(pickle.EMPTY_TUPLE + pickle.REDUCE)
        out.extend(pickle.TUPLE + pickle.REDUCE + pickle.SETITEM)
    out.extend(pickle.STOP)
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as archive:
        archive.writestr("archive/data.pkl", bytes(out))
        for key, data in storages.items():
            archive.writestr(f"archive/data/{key}", data)


# --------------------------------------------------------------------------- fidelity
def test_matches_reference(encoder, ref):
    assert np.abs(_hidden(encoder, ref) - ref["h"]).max() <= TOL
    assert encoder.output_dim == 64


def test_encode_shapes_and_mask(encoder, fixtures_dir):
    with open(os.path.join(fixtures_dir, "hf_tiny", "spm", "corpus.txt"), encoding="utf-8") as f:
        long_text = " ".join(f.read().split()[:40])
    texts = ["red tree", "wind over the tree", long_text]
    out = encoder.encode(texts)
    y, mask = out["y"], out["mask"]
    assert list(y.shape) == [3, 1, MAX_LEN, 64] and y.dtype == paddle.float32
    assert list(mask.shape) == [3, MAX_LEN] and mask.dtype == paddle.int64
    ids, ids_mask = encoder.tokenize(texts)
    np.testing.assert_array_equal(mask.numpy(), ids_mask)
    lengths = ids_mask.sum(axis=1)
    assert lengths[0] < lengths[1] < MAX_LEN and lengths[2] == MAX_LEN  # the long caption is truncated
    for row, n in zip(ids, lengths):
        assert row[n - 1] == 1  # </s> ends every caption, also a truncated one
        assert (row[n:] == 0).all()  # padded with <pad>
    direct = encoder(paddle.to_tensor(ids), paddle.to_tensor(ids_mask)).numpy()
    np.testing.assert_allclose(y.numpy()[:, 0], direct, atol=1e-6)


def test_fixture_folder_untouched(t5_dir, spiece, ref):
    def snapshot():
        return {name: os.stat(os.path.join(t5_dir, name)).st_mtime_ns for name in os.listdir(t5_dir)}

    before = snapshot()
    T5Encoder.from_pretrained(t5_dir, model_max_length=MAX_LEN, tokenizer_path=spiece)
    assert sorted(before) == ["config.json", "model.safetensors"]
    assert snapshot() == before


# --------------------------------------------------------------------------- other checkpoint forms
def test_paddle_pdparams_folder(encoder, ref, tmp_path, t5_dir, spiece):
    folder = _folder(tmp_path, t5_dir, spiece)
    paddle.save(encoder.model.state_dict(), str(folder / "model_state.pdparams"))
    loaded = T5Encoder.from_pretrained(str(folder), model_max_length=MAX_LEN)  # spiece.model in the folder
    assert np.abs(_hidden(loaded, ref) - ref["h"]).max() <= TOL


def test_paddle_layout_safetensors_folder(encoder, ref, tmp_path, t5_dir, spiece):
    folder = _folder(tmp_path, t5_dir, spiece)
    weights = {k: v.numpy() for k, v in encoder.model.state_dict().items()}
    save_file(weights, str(folder / "model.safetensors"), metadata={"format": "np"})
    loaded = T5Encoder.from_pretrained(str(folder), model_max_length=MAX_LEN)
    assert np.abs(_hidden(loaded, ref) - ref["h"]).max() <= TOL


def test_sharded_safetensors_folder(hf_weights, ref, tmp_path, t5_dir, spiece):
    folder = _folder(tmp_path, t5_dir, spiece)
    names = sorted(hf_weights)
    shards = {"model-00001-of-00002.safetensors": names[::2], "model-00002-of-00002.safetensors": names[1::2]}
    for shard, keys in shards.items():
        save_file({k: hf_weights[k] for k in keys}, str(folder / shard), metadata={"format": "pt"})
    weight_map = {k: shard for shard, keys in shards.items() for k in keys}
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    loaded = T5Encoder.from_pretrained(str(folder), model_max_length=MAX_LEN)
    assert np.abs(_hidden(loaded, ref) - ref["h"]).max() <= TOL


def test_torch_bin_folder(hf_weights, ref, tmp_path, t5_dir, spiece):
    folder = _folder(tmp_path, t5_dir, spiece)
    tied = dict(hf_weights, **{"encoder.embed_tokens.weight": hf_weights["shared.weight"]})
    _write_torch_bin(str(folder / "pytorch_model.bin"), tied)
    loaded = T5Encoder.from_pretrained(str(folder), model_max_length=MAX_LEN)
    assert np.abs(_hidden(loaded, ref) - ref["h"]).max() <= TOL


def test_bfloat16_torch_bin_is_widened_exactly(hf_weights, tmp_path, t5_dir, spiece):
    folder = _folder(tmp_path, t5_dir, spiece)
    _write_torch_bin(str(folder / "pytorch_model.bin"), hf_weights, bf16=True)
    loaded = T5Encoder.from_pretrained(str(folder), model_max_length=MAX_LEN)
    name = "encoder.block.0.layer.1.DenseReluDense.wi_0.weight"
    truncated = (hf_weights[name].view(np.uint32) & 0xFFFF0000).view(np.float32)
    np.testing.assert_array_equal(loaded.model.state_dict()[name].numpy(), truncated.T)


def test_output_does_not_depend_on_train_mode(hf_weights, ref, tmp_path, t5_dir, spiece):
    folder = _folder(tmp_path, t5_dir, spiece)
    config = json.loads((folder / "config.json").read_text())
    config["dropout_rate"] = 0.5  # a training-time setting; the frozen encoder never drops
    (folder / "config.json").write_text(json.dumps(config))
    save_file(hf_weights, str(folder / "model.safetensors"), metadata={"format": "pt"})
    loaded = T5Encoder.from_pretrained(str(folder), model_max_length=MAX_LEN)
    loaded.train()
    assert np.abs(_hidden(loaded, ref) - ref["h"]).max() <= TOL


def test_decoder_tensors_are_skipped(hf_weights, ref, tmp_path, t5_dir, spiece):
    folder = _folder(tmp_path, t5_dir, spiece)
    weights = dict(hf_weights, **{"decoder.final_layer_norm.weight": np.ones(64, np.float32)})
    save_file(weights, str(folder / "model.safetensors"), metadata={"format": "pt"})
    loaded = T5Encoder.from_pretrained(str(folder), model_max_length=MAX_LEN)
    assert np.abs(_hidden(loaded, ref) - ref["h"]).max() <= TOL


# --------------------------------------------------------------------------- errors
def test_checkpoint_missing_a_key(hf_weights, tmp_path, t5_dir, spiece):
    folder = _folder(tmp_path, t5_dir, spiece)
    weights = dict(hf_weights)
    del weights["encoder.block.1.layer.0.SelfAttention.q.weight"]
    save_file(weights, str(folder / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(ValueError, match=r"missing keys \['encoder\.block\.1\.layer\.0\.SelfAttention\.q\.weight'\]"):
        T5Encoder.from_pretrained(str(folder), model_max_length=MAX_LEN)


def test_checkpoint_unexpected_key(hf_weights, tmp_path, t5_dir, spiece):
    folder = _folder(tmp_path, t5_dir, spiece)
    weights = dict(hf_weights, **{"encoder.block.2.layer.0.layer_norm.weight": np.ones(64, np.float32)})
    save_file(weights, str(folder / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(ValueError, match=r"unexpected keys \['encoder\.block\.2\.layer\.0\.layer_norm\.weight'\]"):
        T5Encoder.from_pretrained(str(folder), model_max_length=MAX_LEN)


def test_checkpoint_wrong_shape(hf_weights, tmp_path, t5_dir, spiece):
    folder = _folder(tmp_path, t5_dir, spiece)
    weights = dict(hf_weights)
    weights["encoder.final_layer_norm.weight"] = np.ones(32, np.float32)
    save_file(weights, str(folder / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(ValueError, match=r"encoder\.final_layer_norm\.weight: checkpoint \[32\] vs model \[64\]"):
        T5Encoder.from_pretrained(str(folder), model_max_length=MAX_LEN)


def test_config_paddlenlp_cannot_honour(hf_weights, tmp_path, t5_dir, spiece):
    folder = _folder(tmp_path, t5_dir, spiece)
    config = json.loads((folder / "config.json").read_text())
    config["relative_attention_max_distance"] = 64
    (folder / "config.json").write_text(json.dumps(config))
    save_file(hf_weights, str(folder / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(ValueError, match="relative_attention_max_distance 64"):
        T5Encoder.from_pretrained(str(folder), model_max_length=MAX_LEN)


def test_missing_folder_and_tokenizer(tmp_path, t5_dir):
    with pytest.raises(ValueError, match="no_such_t5"):
        T5Encoder.from_pretrained(str(tmp_path / "no_such_t5"), model_max_length=MAX_LEN)
    with pytest.raises(ValueError, match=r"spiece\.model.*tokenizer_path"):
        T5Encoder.from_pretrained(t5_dir, model_max_length=MAX_LEN)  # the fixture folder has no spiece.model


def test_bad_arguments(encoder):
    with pytest.raises(ValueError, match="model_max_length"):
        T5Encoder(encoder.model, encoder.tokenizer, model_max_length=0)
    with pytest.raises(ValueError, match="list of str"):
        encoder.encode("a single string")
    with pytest.raises(ValueError, match="list of str"):
        encoder.encode([])
    with pytest.raises(ValueError, match="list of str"):
        encoder.encode(["ok", 3])


def test_token_outside_the_vocabulary(encoder):
    config = T5Config(**dict(encoder.model.config.to_dict(), vocab_size=100))
    small = T5Encoder(T5EncoderModel(config), encoder.tokenizer, model_max_length=MAX_LEN)
    with pytest.raises(ValueError, match=r"'red tree'.*\[0, 100\)"):
        small.encode(["red tree"])  # "red" is piece 323


# --------------------------------------------------------------------------- caption cleaning
def _clean_quietly(text):
    with warnings.catch_warnings():
        warnings.simplefilter("error", CaptionCleaningWarning)  # an English caption raises no warning
        return text_preprocessing(text)


def test_cleaning_removes_urls_html_and_case():
    assert _clean_quietly("A Cat on a mat, see https://example.com/cat?id=3 and www.cats.org/x") == (
        "a cat on a mat, see and"
    )
    assert _clean_quietly("Watch https://youtu.be/abc now") == "watch now"
    assert _clean_quietly("<p>A <b>Dog</b> running</p>") == "a dog running"
    assert _clean_quietly("A Red BALL &amp; a Box") == "a red ball a box"
    assert _clean_quietly("\u201cQuoted\u201d photo by @john_doe") == '"quoted" photo by'
    assert _clean_quietly("this-is-my-cute-cat_in_the_garden") == "this is my cute cat in the garden"
    assert _clean_quietly("Sunset jc6640 at 1920x1080, free shipping") == "sunset at"
    assert _clean_quietly("a man,walking.in the rain : slowly") == "a man, walking. in the rain: slowly"


def test_cleaning_keeps_chinese_and_warns():
    caption = "一只猫在草地上奔跑 A cat running"
    with pytest.warns(NonLatinCaptionWarning, match="一只猫在草地上奔跑"):
        cleaned = text_preprocessing(caption)
    assert cleaned == "一只猫在草地上奔跑 a cat running"
    with pytest.warns(NonLatinCaptionWarning):
        assert clean_caption("猫") == "猫"
    with pytest.warns(NonLatinCaptionWarning, match="собака"):
        assert text_preprocessing(["собака бежит"]) == ["собака бежит"]


def test_cleaning_keeps_accented_latin_quietly():
    assert _clean_quietly("Café in Zürich") == "café in zürich"


def test_cleaning_warns_when_everything_is_removed():
    with pytest.warns(CaptionCleaningWarning, match="empty after cleaning"):
        assert text_preprocessing("https://example.com/only-a-link") == ""


def test_preprocessing_arguments():
    assert text_preprocessing(["  A B  ", "C"], use_text_preprocessing=False) == ["a b", "c"]
    assert text_preprocessing("  See https://x.com  ", use_text_preprocessing=False) == "see https://x.com"
    with pytest.raises(ValueError, match="str or a list of str"):
        text_preprocessing(42)
    with pytest.raises(ValueError, match="must be a str"):
        text_preprocessing(["ok", None])
    with pytest.raises(ValueError, match="must be a str"):
        clean_caption(b"bytes")
