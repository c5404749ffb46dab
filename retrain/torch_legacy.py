"""Reads a PyTorch *legacy* (pre-1.6, non-zip) checkpoint into numpy arrays, without torch.

The legacy format is a plain sequence written to one file:

1. pickle: the magic number 0x1950a86a20f9469cfc6c;
2. pickle: the protocol version, 1001;
3. pickle: system info (`little_endian`, type sizes);
4. pickle: the object itself (here a state dict). Each tensor is pickled as a call to
   `torch._utils._rebuild_tensor_v2(storage, offset, size, stride, ...)`, where `storage` is a
   *persistent id* `("storage", <StorageType>, key, location, numel, view_metadata)`;
5. pickle: the list of storage keys, in the order their bytes follow;
6. per key: the element count as 8-byte little-endian integer, then the raw elements.

Unpickling runs code named by the file, so this is a security boundary: the unpickler below
resolves only `collections.OrderedDict`, `torch._utils._rebuild_tensor_v2` and the storage types,
and refuses every other global. Tensors are placeholders until the storages are read, then they
are materialised with bounds-checked strides and copied out of the file buffer.
"""

from __future__ import annotations

import collections
import io
import os
import pickle
from dataclasses import dataclass
from typing import Any

import numpy as np

MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
PROTOCOL_VERSION = 1001

# torch.<Name>Storage -> numpy dtype (byte order applied from the file's sys info).
STORAGE_DTYPES: dict[str, str] = {
    "DoubleStorage": "f8",
    "FloatStorage": "f4",
    "HalfStorage": "f2",
    "BFloat16Storage": "u2",  # no numpy bfloat16: read the bits, widen to float32 afterwards
    "LongStorage": "i8",
    "IntStorage": "i4",
    "ShortStorage": "i2",
    "CharStorage": "i1",
    "ByteStorage": "u1",
    "BoolStorage": "?",
}


class UnsafeCheckpointError(pickle.UnpicklingError):
    """The checkpoint's pickle names something outside the allow-list (it may run arbitrary code)."""


class CheckpointFormatError(ValueError):
    """The file is not a well-formed legacy PyTorch checkpoint."""


@dataclass(frozen=True)
class _StorageType:
    name: str


@dataclass
class _Storage:
    key: str
    type_name: str
    numel: int
    data: np.ndarray | None = None


@dataclass(frozen=True)
class _TensorRef:
    storage: _Storage
    offset: int
    shape: tuple[int, ...]
    stride: tuple[int, ...]


def _rebuild_tensor_v2(storage: _Storage, offset: int, size: tuple, stride: tuple, *_: Any) -> _TensorRef:
    """Stands in for torch's rebuild: the storage bytes come after the pickle, so defer."""
    if not isinstance(storage, _Storage):
        raise CheckpointFormatError(f"tensor storage is a {type(storage).__name__}, not a storage")
    return _TensorRef(storage, int(offset), tuple(int(s) for s in size), tuple(int(s) for s in stride))


class _RestrictedUnpickler(pickle.Unpickler):
    """Resolves only the globals a state dict needs; everything else is refused."""

    def __init__(self, file: io.BufferedIOBase, storages: dict[str, _Storage]) -> None:
        super().__init__(file)
        self._storages = storages

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return _rebuild_tensor_v2
        if module == "torch" and name in STORAGE_DTYPES:
            return _StorageType(name)
        raise UnsafeCheckpointError(
            f"refusing to load {module}.{name}: not allowed in a weights checkpoint "
            "(only OrderedDict, torch._utils._rebuild_tensor_v2 and torch storage types are)"
        )

    def persistent_load(self, pid: Any) -> _Storage:
        if not (isinstance(pid, tuple) and len(pid) == 6 and pid[0] == "storage"):
            raise CheckpointFormatError(f"unsupported persistent id {pid!r:.80}")
        _, storage_type, key, _location, numel, view = pid
        if not isinstance(storage_type, _StorageType):
            raise CheckpointFormatError(f"storage type {storage_type!r:.80} is not a torch storage type")
        if view is not None:  # storage views: only written by torch < 0.4
            raise CheckpointFormatError("storage views (torch < 0.4 checkpoints) are not supported")
        return self._storages.setdefault(str(key), _Storage(str(key), storage_type.name, int(numel)))


def load_legacy_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Reads a legacy-format `.pth` state dict: parameter name -> numpy array (a copy, C-ordered).

    Raises `UnsafeCheckpointError` if the pickle references anything outside the allow-list and
    `CheckpointFormatError` if the file is not a legacy checkpoint (e.g. the newer zip format).
    """
    with open(path, "rb") as f:
        buffer = io.BytesIO(f.read())
    if buffer.getvalue()[:4] == b"PK\x03\x04":
        raise CheckpointFormatError(f"{path} is a zip-format checkpoint, not the legacy format")
    storages: dict[str, _Storage] = {}

    def load() -> Any:
        return _RestrictedUnpickler(buffer, storages).load()

    try:
        if load() != MAGIC_NUMBER:
            raise CheckpointFormatError(f"{path} is not a legacy PyTorch checkpoint (bad magic number)")
        if load() != PROTOCOL_VERSION:
            raise CheckpointFormatError(f"{path}: unsupported protocol version")
        sys_info = load()
        state = load()
        keys = load()
    except (UnsafeCheckpointError, CheckpointFormatError):
        raise
    except (EOFError, AttributeError, TypeError, ValueError, pickle.UnpicklingError) as e:
        raise CheckpointFormatError(f"{path}: malformed checkpoint: {e}") from e
    if not isinstance(keys, list):
        raise CheckpointFormatError(f"{path}: expected the list of storage keys, found {type(keys).__name__}")
    byte_order = "<" if not isinstance(sys_info, dict) or sys_info.get("little_endian", True) else ">"
    _read_storages(buffer, keys, storages, byte_order, path)
    if not isinstance(state, dict):
        raise CheckpointFormatError(f"{path}: expected a state dict, found {type(state).__name__}")
    return {str(name): _materialise(value, str(name)) for name, value in state.items()}


def _read_storages(
    buffer: io.BytesIO, keys: list, storages: dict[str, _Storage], byte_order: str, path: str | os.PathLike
) -> None:
    """Reads the raw storages that follow the pickles: an 8-byte element count, then the elements."""
    raw = buffer.getbuffer()
    position = buffer.tell()
    for key in keys:
        storage = storages.get(str(key))
        if storage is None:
            raise CheckpointFormatError(f"{path}: storage {key!r} is not referenced by any tensor")
        if position + 8 > len(raw):
            raise CheckpointFormatError(f"{path}: truncated before storage {key!r}")
        count = int.from_bytes(raw[position : position + 8], "little")
        dtype = np.dtype(byte_order + STORAGE_DTYPES[storage.type_name])
        end = position + 8 + count * dtype.itemsize
        if count != storage.numel or end > len(raw):
            raise CheckpointFormatError(f"{path}: storage {key!r} is truncated or has the wrong size")
        storage.data = np.frombuffer(raw[position + 8 : end], dtype=dtype)
        position = end


def _materialise(value: Any, name: str) -> np.ndarray:
    """A deferred tensor -> numpy array, refusing strides that would read outside its storage."""
    if not isinstance(value, _TensorRef):
        raise CheckpointFormatError(f"{name}: expected a tensor, found {type(value).__name__}")
    storage = value.storage
    data = storage.data
    if data is None:
        raise CheckpointFormatError(f"{name}: its storage {storage.key!r} was never written")
    if len(value.shape) != len(value.stride) or any(s < 0 for s in value.shape + value.stride):
        raise CheckpointFormatError(f"{name}: bad shape {value.shape} / stride {value.stride}")
    native = data.dtype.newbyteorder("=")
    if 0 in value.shape:
        array = np.zeros(value.shape, dtype=native)
    else:
        last = value.offset + sum((n - 1) * s for n, s in zip(value.shape, value.stride, strict=True))
        if value.offset < 0 or last >= data.size:
            raise CheckpointFormatError(f"{name}: shape/stride reach outside its storage")
        strides = tuple(s * data.itemsize for s in value.stride)
        view = np.lib.stride_tricks.as_strided(data[value.offset :], value.shape, strides, writeable=False)
        array = np.array(view, dtype=native, order="C")
    if storage.type_name == "BFloat16Storage":
        array = (array.astype(np.uint32) << 16).view(np.float32)
    return array
