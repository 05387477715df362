"""Read safetensors files into float32 numpy arrays, bfloat16 included, without torch.

The numpy backend of `safetensors` cannot represent bfloat16 (numpy has no such dtype); released
checkpoints often store it. The file format is simple (8-byte little-endian header size, a JSON
header of {name: {dtype, shape, data_offsets}}, then raw little-endian data), so bfloat16 tensors
are read from their raw bytes and widened exactly to float32.
"""
import json
import struct

import numpy as np

_NUMPY_DTYPES = {
    "F64": np.float64,
    "F32": np.float32,
    "F16": np.float16,
    "I64": np.int64,
    "I32": np.int32,
    "I16": np.int16,
    "I8": np.int8,
    "U8": np.uint8,
    "BOOL": np.bool_,
}


def read_header(path):
    """(header dict without "__metadata__", metadata dict, data start offset) of a safetensors file."""
    with open(path, "rb") as f:
        (size,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(size))
    metadata = header.pop("__metadata__", None) or {}
    return header, metadata, 8 + size


def bf16_bits_to_float32(bits):
    """bfloat16 bit patterns (uint16) -> float32, exactly."""
    return (bits.astype(np.uint32) << 16).view(np.float32)


def read_tensor(path, key, header=None, start=None):
    """One tensor of a safetensors file as a numpy array (bfloat16 widened to float32).

    Raises:
        KeyError: no tensor `key`; ValueError: a dtype this reader does not know.
    """
    if header is None:
        header, _, start = read_header(path)
    if key not in header:
        raise KeyError(f"no tensor {key!r} in {path!r}")
    info = header[key]
    begin, end = info["data_offsets"]
    with open(path, "rb") as f:
        f.seek(start + begin)
        raw = f.read(end - begin)
    dtype = info["dtype"]
    if dtype == "BF16":
        return bf16_bits_to_float32(np.frombuffer(raw, dtype="<u2")).reshape(info["shape"])
    if dtype not in _NUMPY_DTYPES:
        raise ValueError(f"tensor {key!r} in {path!r} has dtype {dtype}; accepted: BF16, {', '.join(_NUMPY_DTYPES)}")
    return np.frombuffer(raw, dtype=np.dtype(_NUMPY_DTYPES[dtype]).newbyteorder("<")).reshape(info["shape"]).copy()


def load_all(path):
    """{name: numpy array} of every tensor in a safetensors file (bfloat16 widened to float32)."""
    header, _, start = read_header(path)
    return {key: read_tensor(path, key, header, start) for key in header}
