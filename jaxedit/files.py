"""Reading the small files a caller names (JSON records, `.npz` arrays) with errors that name them,
and checking the big ones (GGUF, safetensors) against their own headers before they are read.

A file that is not there raises `MissingFileError`; one that is there but does not parse (cut
short, overwritten, not the format at all) raises `CorruptFileError`, and one that ends before the
data its header declares raises `TruncatedFileError` (an interrupted download or copy). All are
`InputError`s whose message names the file, says what is wrong and what to do about it.

`check_gguf` and `check_safetensors` read only the header (a GGUF's metadata and tensor table, a
safetensors file's JSON header) and compare the end of the last tensor it declares with the file
size, so that a cut-short weight file is reported as such rather than as a failed reshape deep in
a reader.
"""

from __future__ import annotations

import json
import mmap
import os
import struct
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from jaxedit.errors import CorruptFileError, MissingFileError, TruncatedFileError

__all__ = ["check_gguf", "check_safetensors", "read_json", "read_npz", "require_file"]


def _fix(fix: str | None) -> str:
    return f" (fix: {fix})" if fix else ""


def require_file(path: str | os.PathLike, what: str, fix: str | None = None) -> Path:
    """`path` as a `Path` if it is an existing file, else `MissingFileError` naming it."""
    path = Path(path)
    if path.is_dir():
        raise MissingFileError(f"{what} {path} is a directory, not a file{_fix(fix)}")
    if not path.is_file():
        raise MissingFileError(f"{what} {path} does not exist{_fix(fix)}")
    return path


def read_json(path: str | os.PathLike, what: str, fix: str | None = None) -> Any:
    """The JSON value in `path` (`what` names the file in messages, e.g. "run file")."""
    path = require_file(path, what, fix)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CorruptFileError(
            f"{what} {path} is not valid JSON ({err.__class__.__name__}: {err}){_fix(fix)}"
        ) from None


def read_npz(path: str | os.PathLike, what: str, fix: str | None = None) -> dict[str, np.ndarray]:
    """Every array of the `.npz` file `path`, read eagerly (a cut-short or overwritten file fails
    here, naming the file, rather than half-way through the work that uses it)."""
    path = require_file(path, what, fix)
    try:
        data = np.load(path, allow_pickle=False)
        if isinstance(data, np.lib.npyio.NpzFile):
            with data:
                return {name: np.asarray(data[name]) for name in data.files}
    except (zipfile.BadZipFile, EOFError, OSError, ValueError) as err:
        # numpy reports a file that is not a zip of .npy members as ValueError (it would have to
        # unpickle it), a cut-short or overwritten one as BadZipFile/EOFError.
        raise CorruptFileError(
            f"{what} {path} is not a readable .npz file ({err.__class__.__name__}: {err})"
            f"{_fix(fix)}"
        ) from None
    raise CorruptFileError(f"{what} {path} holds one array, not an .npz archive{_fix(fix)}")


# --------------------------------------------------------------------------------------------------
# weight files: header vs. size

_REFETCH = (
    "download or copy it again; a cached download (preset, hub snapshot): delete it to refetch"
)


class _Short(Exception):
    """The header reader ran past the end of the file."""


class _Header:
    """Little-endian reads from a buffer that raise `_Short` past its end."""

    def __init__(self, buf):
        self.buf, self.pos, self.size = buf, 0, len(buf)

    def take(self, fmt: str) -> tuple:
        n = struct.calcsize(fmt)
        if self.pos + n > self.size:
            raise _Short
        out = struct.unpack_from(fmt, self.buf, self.pos)
        self.pos += n
        return out

    def skip(self, n: int) -> None:
        if self.pos + n > self.size:
            raise _Short
        self.pos += n

    def string(self) -> bytes:
        (n,) = self.take("<Q")
        start = self.pos
        self.skip(n)
        return bytes(self.buf[start : self.pos])


# GGUF metadata value types (gguf.GGUFValueType): fixed sizes; 8 = string, 9 = array.
_GGUF_SIZES = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
_GGUF_MAGIC = b"GGUF"


def _gguf_value(h: _Header, vtype: int, path: Path) -> int | None:
    """Skips one metadata value; returns it when it is a uint32 (for general.alignment)."""
    if vtype == 4:
        return int(h.take("<I")[0])
    if vtype in _GGUF_SIZES:
        h.skip(_GGUF_SIZES[vtype])
    elif vtype == 8:
        h.string()
    elif vtype == 9:
        itype, count = h.take("<IQ")
        if itype in _GGUF_SIZES:
            h.skip(_GGUF_SIZES[itype] * count)
        else:
            for _ in range(count):
                _gguf_value(h, itype, path)
    else:
        raise CorruptFileError(
            f"{path}: GGUF metadata value of unknown type {vtype}: the file is corrupt "
            f"(fix: {_REFETCH})"
        )
    return None


def check_gguf(path: str | os.PathLike) -> None:
    """Raises `TruncatedFileError` when the GGUF file `path` ends before the tensor data its
    header declares (or inside the header), `CorruptFileError` when it is not a GGUF file."""
    from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType

    path = require_file(path, "GGUF file")
    size = path.stat().st_size
    if size == 0:
        raise TruncatedFileError(f"{path}: truncated GGUF file: it is empty (fix: {_REFETCH})")
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
        if buf[:4] != _GGUF_MAGIC[: min(4, size)]:
            raise CorruptFileError(
                f"{path}: not a GGUF file (it does not start with 'GGUF') (fix: pass a .gguf file "
                "written by llama.cpp's converter, or a Hugging Face model directory)"
            )
        h = _Header(buf)
        try:
            h.skip(4)
            (version,) = h.take("<I")
            if version & 0xFFFF == 0:
                return  # a big-endian file: left to the gguf reader
            n_tensors, n_kv = h.take("<QQ")
            alignment = 32
            for _ in range(n_kv):
                key = h.string()
                (vtype,) = h.take("<I")
                value = _gguf_value(h, vtype, path)
                if key == b"general.alignment" and value:
                    alignment = value
            end = 0
            for _ in range(n_tensors):
                h.string()
                (n_dims,) = h.take("<I")
                dims = h.take(f"<{n_dims}Q")
                ttype, offset = h.take("<IQ")
                try:
                    block, type_size = GGML_QUANT_SIZES[GGMLQuantizationType(ttype)]
                except ValueError:
                    raise CorruptFileError(
                        f"{path}: tensor of unknown GGML type {ttype}: the file is corrupt or "
                        f"newer than the installed gguf package (fix: {_REFETCH}, or upgrade gguf)"
                    ) from None
                n = 1
                for d in dims:
                    n *= d
                end = max(end, offset + n * type_size // block)
        except _Short:
            raise TruncatedFileError(
                f"{path}: truncated GGUF file: it ends inside its own header ({size} bytes) "
                f"(an interrupted download or copy; fix: {_REFETCH})"
            ) from None
    data_start = -(-h.pos // alignment) * alignment
    if data_start + end > size:
        raise TruncatedFileError(
            f"{path}: truncated GGUF file: its header declares tensor data up to byte "
            f"{data_start + end}, the file has {size} bytes (an interrupted download or copy; "
            f"fix: {_REFETCH})"
        )


def check_safetensors(path: str | os.PathLike) -> None:
    """Raises `TruncatedFileError` when the safetensors file `path` ends before the tensor data its
    header declares, `CorruptFileError` when its header is not a safetensors header."""
    path = require_file(path, "safetensors file")
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise TruncatedFileError(
                f"{path}: truncated safetensors file ({size} bytes, shorter than its header) "
                f"(fix: {_REFETCH})"
            )
        (n,) = struct.unpack("<Q", head)
        if n > size:
            raise TruncatedFileError(
                f"{path}: truncated safetensors file: its header alone is {n} bytes, the file "
                f"has {size} (an interrupted download or copy; fix: {_REFETCH})"
            )
        raw = f.read(n)
    try:
        header = json.loads(raw)
        ends = [int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"]
    except (ValueError, TypeError, KeyError, IndexError, AttributeError):
        raise CorruptFileError(
            f"{path}: not a safetensors file (its header is not a safetensors JSON header) "
            f"(fix: {_REFETCH})"
        ) from None
    declared = 8 + n + max(ends, default=0)
    if declared > size:
        raise TruncatedFileError(
            f"{path}: truncated safetensors file: its header declares tensor data up to byte "
            f"{declared}, the file has {size} bytes (an interrupted download or copy; "
            f"fix: {_REFETCH})"
        )
