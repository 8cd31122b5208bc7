"""Reading and writing IDX files (the MNIST / Fashion-MNIST format), plain or gzip-compressed.

Example:
    >>> import numpy as np, tempfile, os
    >>> from sparselab.data.idx import read_idx, write_idx
    >>> path = os.path.join(tempfile.mkdtemp(), "x-idx3-ubyte.gz")
    >>> write_idx(path, np.arange(8, dtype=np.uint8).reshape(2, 2, 2))
    >>> read_idx(path).shape
    (2, 2, 2)
"""
from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np

from ..errors import ConfigError, DataNotFoundError

_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
_CODES = {np.dtype(np.uint8): 0x08, np.dtype(np.int8): 0x09}


def _open(path: Path):
    return gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX array (in native byte order); raises a clear error for a missing, truncated or malformed file,
    or one whose size does not match the shape in its header."""
    path = Path(path)
    try:
        with _open(path) as f:
            raw = f.read()
    except FileNotFoundError:
        raise DataNotFoundError(f"{path} does not exist") from None
    except (OSError, EOFError) as exc:  # a damaged or cut-off gzip stream, or an unreadable file
        raise DataNotFoundError(f"{path} cannot be read ({type(exc).__name__}: {exc}): the file is damaged or "
                                f"truncated; copy or download it again") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _DTYPES:
        raise DataNotFoundError(f"{path} is not an IDX file (bad magic number)")
    ndim = raw[3]
    offset = 4 + 4 * ndim
    if ndim == 0:
        raise DataNotFoundError(f"{path} is not an IDX array: its header gives no dimensions")
    if len(raw) < offset:
        raise DataNotFoundError(f"{path} is truncated: its header is cut off before its {ndim} dimensions")
    dims = struct.unpack(f">{ndim}I", raw[4:offset])
    dtype = np.dtype(_DTYPES[raw[2]])
    count = int(np.prod(dims))
    size = count * dtype.itemsize
    if len(raw) - offset < size:
        raise DataNotFoundError(f"{path} is truncated: expected {count} values of shape {dims}")
    if len(raw) - offset > size:
        raise DataNotFoundError(f"{path} holds {len(raw) - offset - size} bytes more than the {count} values of "
                                f"shape {dims} its header gives: the header does not match the data")
    values = np.frombuffer(raw, dtype=dtype, count=count, offset=offset).reshape(dims)
    return values.astype(dtype.newbyteorder("="))


def write_idx(path: str | Path, array: np.ndarray) -> None:
    """Write a uint8/int8 array as an IDX file (gzip-compressed when the name ends in ``.gz``)."""
    path = Path(path)
    array = np.ascontiguousarray(array)
    if array.dtype not in _CODES:
        raise ConfigError(f"write_idx writes uint8 or int8 arrays, got dtype {array.dtype}")
    header = bytes([0, 0, _CODES[array.dtype], array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    data = header + array.tobytes()
    if path.suffix == ".gz":
        with gzip.open(path, "wb") as f:
            f.write(data)
    else:
        path.write_bytes(data)
