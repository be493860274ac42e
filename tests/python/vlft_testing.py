"""Shared helpers for the Python checks: run the vlft binary, read and write
safetensors independently of vlft (struct + json + numpy), temp folders."""
import atexit
import json
import os
import shutil
import struct
import subprocess
import tempfile

import numpy as np

VLFT = os.environ.get("VLFT_BIN", os.path.join(os.path.dirname(__file__), "..", "..", "build", "vlft"))
ROOT = os.environ.get("VLFT_ROOT", os.path.join(os.path.dirname(__file__), "..", ".."))

NUMPY_DTYPES = {"F32": np.float32, "F16": np.float16, "F64": np.float64, "I64": np.int64, "I32": np.int32,
                "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_}


class Skip(Exception):
    """Raised by a check that cannot run here (no GPU); runner.py reports it as SKIP with the reason."""


def run_vlft(*args, check=True, **kwargs):
    """Runs vlft with args; returns the CompletedProcess (text mode)."""
    result = subprocess.run([VLFT, *map(str, args)], capture_output=True, text=True, **kwargs)
    if check and result.returncode != 0:
        raise AssertionError(f"vlft {' '.join(map(str, args))} exited {result.returncode}:\n{result.stderr}")
    return result


_temp_dirs = []


def tempdir():
    """A fresh folder, removed when the test process exits."""
    path = tempfile.mkdtemp(prefix="vlft-test-")
    _temp_dirs.append(path)
    return path


@atexit.register
def _remove_temp_dirs():
    for path in _temp_dirs:
        shutil.rmtree(path, ignore_errors=True)


def bf16_to_f32(raw_u16):
    return (raw_u16.astype(np.uint32) << 16).view(np.float32)


def read_safetensors(path):
    """An independent reader: returns ({name: np.ndarray (bf16 as f32)}, metadata)."""
    with open(path, "rb") as f:
        data = f.read()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n])
    metadata = header.pop("__metadata__", None)
    base = 8 + n
    tensors = {}
    for name, info in header.items():
        begin, end = info["data_offsets"]
        raw = data[base + begin:base + end]
        if info["dtype"] == "BF16":
            array = bf16_to_f32(np.frombuffer(raw, dtype=np.uint16))
        else:
            array = np.frombuffer(raw, dtype=NUMPY_DTYPES[info["dtype"]])
        tensors[name] = array.reshape(info["shape"])
    return tensors, metadata


def write_safetensors(path, tensors, metadata=None):
    """An independent writer: tensors is {name: np.ndarray}; data in name order."""
    names = {v: k for k, v in NUMPY_DTYPES.items()}
    header = {}
    if metadata:
        header["__metadata__"] = metadata
    offset = 0
    blobs = []
    for name, array in tensors.items():
        array = np.asarray(array, order="C")  # (ascontiguousarray would make a 0-d array 1-d)
        raw = array.tobytes()
        header[name] = {"dtype": names[array.dtype.type], "shape": list(array.shape),
                        "data_offsets": [offset, offset + len(raw)]}
        offset += len(raw)
        blobs.append(raw)
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for raw in blobs:
            f.write(raw)


def read_model_folder(folder):
    """All tensors of a HF folder (single file or index + shards)."""
    index = os.path.join(folder, "model.safetensors.index.json")
    if os.path.exists(index):
        with open(index) as f:
            weight_map = json.load(f)["weight_map"]
        tensors = {}
        for shard in sorted(set(weight_map.values())):
            part, _ = read_safetensors(os.path.join(folder, shard))
            tensors.update(part)
        assert set(tensors) == set(weight_map), "index and shards disagree"
        return tensors
    return read_safetensors(os.path.join(folder, "model.safetensors"))[0]


_tiny_models = {}


def tiny_model(projector="yivl", dtype="f32"):
    """A `vlft init-tiny` model folder (seed 7), made once per process for
    each (projector, dtype)."""
    key = (projector, dtype)
    if key not in _tiny_models:
        folder = os.path.join(tempdir(), f"tiny-{projector}-{dtype}")
        run_vlft("init-tiny", folder, "--projector", projector, "--dtype", dtype, "--seed", "7")
        _tiny_models[key] = folder
    return _tiny_models[key]


def rel_norm(a, b):
    """|a - b| / |b| in float64 (b the reference)."""
    return float(np.linalg.norm(np.asarray(a, np.float64) - b) / max(np.linalg.norm(b), 1e-30))
