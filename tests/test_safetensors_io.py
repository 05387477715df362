"""The raw safetensors reader: bfloat16 / float16 / float32 without torch, errors named."""
import numpy as np
import pytest
from safetensors.numpy import save_file

from utils.safetensors_io import load_all, read_header, read_tensor


def test_reads_float_types_and_bfloat16(tmp_path):
    path = str(tmp_path / "w.safetensors")
    a = np.arange(12, dtype=np.float32).reshape(3, 4) / 7
    save_file({"a": a, "h": a.astype(np.float16)}, path, metadata={"format": "pt"})
    out = load_all(path)
    np.testing.assert_array_equal(out["a"], a)
    np.testing.assert_array_equal(out["h"], a.astype(np.float16))
    assert read_header(path)[1] == {"format": "pt"}

    # a bfloat16 tensor written byte by byte: the top 16 bits of float32 values
    import json
    import struct

    values = np.array([1.0, -2.5, 3.140625, 0.0], dtype=np.float32)
    bits = (values.view(np.uint32) >> 16).astype("<u2").tobytes()
    header = json.dumps({"b": {"dtype": "BF16", "shape": [2, 2], "data_offsets": [0, len(bits)]}}).encode()
    bf16 = tmp_path / "bf16.safetensors"
    bf16.write_bytes(struct.pack("<Q", len(header)) + header + bits)
    np.testing.assert_array_equal(read_tensor(str(bf16), "b"), values.reshape(2, 2))
    with pytest.raises(KeyError, match="no tensor 'zz'"):
        read_tensor(str(bf16), "zz")
