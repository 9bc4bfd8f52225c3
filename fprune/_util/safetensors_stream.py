"""Safetensors files read and written one tensor at a time, without memory-mapping them.

``safetensors.safe_open`` maps the whole file, and every page a read touches counts in the
process's RSS until the mapping goes, so reading a 13 GiB checkpoint through it holds up to
13 GiB. Here :func:`read_header` parses only the header, :func:`read_tensor` reads one tensor's
bytes with ordinary file reads into a new tensor of its own, and :func:`write_safetensors`
writes the header first and then each tensor as a callback produces it, so at most one tensor
(and a chunk of 64 MiB for a non-contiguous one) is held at a time. The page cache the reads
and writes go through is the kernel's, not the process's.

The format: an 8-byte little-endian length ``N``, ``N`` bytes of UTF-8 JSON mapping each
tensor name to ``{"dtype", "shape", "data_offsets": [begin, end]}`` (offsets into the data
section that starts at ``8 + N``) and ``"__metadata__"`` to a ``{str: str}`` map, then the raw
little-endian, C-contiguous bytes of the tensors.
"""

from __future__ import annotations

import ctypes
import io
import json
import os
import struct
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import NamedTuple

import torch
from torch import Tensor

from fprune._errors import PruneError

__all__ = ["SafetensorsFile", "TensorEntry", "checkpoint_files", "read_header", "read_tensor", "write_safetensors"]

_DTYPES: dict[str, torch.dtype] = {
    "BOOL": torch.bool,
    "U8": torch.uint8,
    "I8": torch.int8,
    "I16": torch.int16,
    "I32": torch.int32,
    "I64": torch.int64,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "F32": torch.float32,
    "F64": torch.float64,
    "F8_E4M3": torch.float8_e4m3fn,
    "F8_E5M2": torch.float8_e5m2,
}
_CODES: dict[torch.dtype, str] = {dtype: code for code, dtype in _DTYPES.items()}
_CHUNK_BYTES = 64 * 2**20  # the most bytes one read or write moves, and one copied chunk holds
_INDEX = "model.safetensors.index.json"


class TensorEntry(NamedTuple):
    """One tensor of a safetensors file: its bytes are ``file[begin:end]`` (absolute offsets)."""

    name: str
    dtype: torch.dtype
    shape: tuple[int, ...]
    begin: int
    end: int


class SafetensorsFile(NamedTuple):
    """A safetensors file's header: its tensors in the order of their bytes, and its metadata."""

    path: Path
    entries: dict[str, TensorEntry]
    metadata: dict[str, str]


def _little_endian(function: str) -> None:
    if sys.byteorder != "little":
        raise PruneError(f"{function}: safetensors data is little-endian and this machine is big-endian; run on a little-endian machine")


def _buffer(tensor: Tensor, start: int, stop: int) -> memoryview:
    """Bytes `start`..`stop` of contiguous CPU `tensor`'s memory, as a writable view (no copy)
    that keeps `tensor` alive."""
    array = (ctypes.c_char * (stop - start)).from_address(tensor.data_ptr() + start)
    setattr(array, "_tensor", tensor)  # the view holds the array, the array the tensor
    return memoryview(array).cast("B")


def _bad(path: Path, why: str) -> PruneError:
    return PruneError(f"read_header: `{path}` is not a safetensors file: {why}; pass a file written by safetensors (save_file, save_pretrained) or write_safetensors")


class _Repeated(ValueError):
    """A JSON object with a key given twice."""


def _no_duplicates(pairs: list[tuple[str, object]]) -> dict[str, object]:
    """A JSON object's pairs as a dict, refusing a key given twice (``json`` keeps the last)."""
    result: dict[str, object] = {}
    for key, value in pairs:
        if key in result:
            raise _Repeated(key)
        result[key] = value
    return result


def _count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def read_header(path: str | os.PathLike[str]) -> SafetensorsFile:
    """The header of the safetensors file at `path`, checked: every tensor's dtype known, its
    byte range inside the file, of ``numel * itemsize`` bytes, and overlapping no other's.
    Reads only the header's bytes."""
    file = Path(path)
    if not file.is_file():
        raise PruneError(f"read_header: no file `{file}`; pass the path of a .safetensors file")
    with open(file, "rb", buffering=0) as stream:
        size = os.fstat(stream.fileno()).st_size
        if size < 8:
            raise _bad(file, f"it is {size} bytes, too short for the 8-byte header length")
        (length,) = struct.unpack("<Q", stream.read(8))
        if length > size - 8:
            raise _bad(file, f"its header length says {length} bytes, but only {size - 8} follow (a truncated file?)")
        raw = bytearray(length)
        if _fill(stream, memoryview(raw)) != length:
            raise _bad(file, "it ended while its header was read")
    try:
        header = json.loads(raw.decode("utf-8"), object_pairs_hook=_no_duplicates)
    except _Repeated as error:
        raise _bad(file, f"its header gives `{error}` twice") from None
    except (UnicodeDecodeError, ValueError) as error:
        raise _bad(file, f"its header is not UTF-8 JSON ({error})") from None
    if not isinstance(header, dict):
        raise _bad(file, "its header is not a JSON object")
    start = 8 + length
    metadata = header.pop("__metadata__", None)
    metadata = {} if metadata is None else metadata
    if not isinstance(metadata, dict) or not all(isinstance(value, str) for value in metadata.values()):
        raise _bad(file, "its `__metadata__` is not a map of strings to strings")
    entries: list[TensorEntry] = []
    for name, info in header.items():
        entries.append(_entry(file, name, info, start, size))
    entries.sort(key=lambda entry: (entry.begin, entry.end))
    for before, after in zip(entries, entries[1:]):
        if after.begin < before.end:
            raise _bad(file, f"the bytes of tensors `{before.name}` and `{after.name}` overlap")
    return SafetensorsFile(file, {entry.name: entry for entry in entries}, dict(metadata))


def _entry(file: Path, name: str, info: object, start: int, size: int) -> TensorEntry:
    """Tensor `name`'s header entry `info`, checked against a data section at `start` of a file of `size` bytes."""
    if not isinstance(info, dict):
        raise _bad(file, f"the header entry of tensor `{name}` is not a JSON object")
    code, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
    if not isinstance(code, str) or not isinstance(shape, list) or not all(_count(n) for n in shape):
        raise _bad(file, f"tensor `{name}` has no valid `dtype` and `shape`")
    if not isinstance(offsets, list) or len(offsets) != 2 or not all(_count(n) for n in offsets) or offsets[0] > offsets[1]:
        raise _bad(file, f"tensor `{name}` has no valid `data_offsets` [begin, end]")
    dtype = _DTYPES.get(code)
    if dtype is None:
        raise PruneError(
            f"read_header: tensor `{name}` of `{file}` has dtype `{code}`, which fprune cannot read "
            f"(it reads {', '.join(_DTYPES)}); convert the checkpoint to one of those"
        )
    begin, end = start + offsets[0], start + offsets[1]
    if end > size:
        raise _bad(file, f"tensor `{name}` ends at byte {end}, past the file's end at {size} (a truncated file?)")
    numel = 1
    for n in shape:
        numel *= n
    if end - begin != numel * dtype.itemsize:
        raise _bad(file, f"tensor `{name}` has {end - begin} bytes, but a {code} tensor of shape {tuple(shape)} has {numel * dtype.itemsize}")
    return TensorEntry(name, dtype, tuple(shape), begin, end)


def _fill(stream: io.RawIOBase, view: memoryview) -> int:
    """Read from `stream`'s position into `view` in chunks of at most 64 MiB; the bytes read
    (fewer than ``len(view)`` only at the end of the file)."""
    done = 0
    while done < len(view):
        count = stream.readinto(view[done : done + _CHUNK_BYTES])
        if not count:
            break
        done += count
    return done


def read_tensor(file: SafetensorsFile, name: str) -> Tensor:
    """Tensor `name` of `file`, read from disk into a new CPU tensor that owns its memory (no
    memory map, no view of a buffer shared with anything else)."""
    entry = file.entries.get(name)
    if entry is None:
        some = ", ".join(f"`{other}`" for other in list(file.entries)[:5])
        raise PruneError(f"read_tensor: `{file.path}` has no tensor `{name}` (its tensors include {some or 'none'}); pass a name of its header's entries")
    _little_endian("read_tensor")
    data = torch.empty(entry.end - entry.begin, dtype=torch.uint8)
    if data.numel():
        with open(file.path, "rb", buffering=0) as stream:
            stream.seek(entry.begin)
            done = _fill(stream, _buffer(data, 0, data.numel()))
        if done != data.numel():
            raise PruneError(f"read_tensor: `{file.path}` ended {done} bytes into tensor `{name}` (the file changed since its header was read?); read its header again")
    return data.view(entry.dtype).reshape(entry.shape)


def _byte_chunks(tensor: Tensor) -> Iterator[memoryview]:
    """`tensor`'s bytes in C order, little-endian, as views of at most 64 MiB each: of its own
    memory where it is a contiguous CPU tensor, else of contiguous CPU copies of parts of it."""
    tensor = tensor.detach().resolve_neg()
    size = tensor.numel() * tensor.element_size()
    if tensor.device.type == "cpu" and tensor.is_contiguous():
        for start in range(0, size, _CHUNK_BYTES):
            yield _buffer(tensor, start, min(start + _CHUNK_BYTES, size))
        return
    if tensor.dim() == 0 or size <= _CHUNK_BYTES:
        part = tensor.to("cpu").contiguous()
        if size:
            yield _buffer(part, 0, size)
        return
    rows = max(1, _CHUNK_BYTES // (size // tensor.shape[0]))
    for start in range(0, tensor.shape[0], rows):
        yield from _byte_chunks(tensor[start] if rows == 1 else tensor[start : start + rows])


def _layout(specs: Sequence[tuple[str, torch.dtype, tuple[int, ...]]], metadata: Mapping[str, str] | None) -> tuple[bytes, list[tuple[str, torch.dtype, tuple[int, ...]]]]:
    """The length-prefixed, space-padded header of a file of `specs` (in their order), and the specs checked."""
    header: dict[str, object] = {}
    if metadata is not None:
        if not all(isinstance(key, str) and isinstance(value, str) for key, value in metadata.items()):
            raise PruneError("write_safetensors: `metadata` must map strings to strings; convert its keys and values with str()")
        header["__metadata__"] = dict(metadata)
    checked: list[tuple[str, torch.dtype, tuple[int, ...]]] = []
    offset = 0
    for name, dtype, shape in specs:
        if not isinstance(name, str) or name == "__metadata__" or name in header:
            raise PruneError(f"write_safetensors: tensor name {name!r} is not a string, is `__metadata__` or is given twice; give each tensor one distinct name")
        code = _CODES.get(dtype)
        if code is None:
            raise PruneError(f"write_safetensors: tensor `{name}` has dtype {dtype}, which safetensors files here cannot hold (they hold {', '.join(map(str, _CODES))}); convert it")
        shape = tuple(shape)
        if not all(_count(n) for n in shape):
            raise PruneError(f"write_safetensors: tensor `{name}` has shape {shape}; give a tuple of non-negative ints")
        size = dtype.itemsize
        for n in shape:
            size *= n
        header[name] = {"dtype": code, "shape": list(shape), "data_offsets": [offset, offset + size]}
        checked.append((name, dtype, shape))
        offset += size
    try:
        text = json.dumps(header, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    except UnicodeEncodeError as error:
        raise PruneError(f"write_safetensors: a tensor name or metadata string is not valid Unicode ({error}); rename it") from None
    text += b" " * (-(8 + len(text)) % 8)
    return struct.pack("<Q", len(text)) + text, checked


def write_safetensors(
    path: str | os.PathLike[str],
    specs: Sequence[tuple[str, torch.dtype, tuple[int, ...]]],
    produce: Callable[[str], Tensor],
    metadata: Mapping[str, str] | None = None,
) -> None:
    """Write a safetensors file of the tensors `specs` names, ``(name, dtype, shape)``, in that
    order, with `metadata` (if given) as its ``__metadata__``.

    The header is written first; then for each spec ``produce(name)`` is called once, its
    result checked to have the spec's dtype and shape, its bytes written (in chunks of at most
    64 MiB, copied only where it is not a contiguous CPU tensor) and the tensor dropped before
    the next call. The file is written to ``<path>.partial`` and renamed to `path` at the end;
    if anything fails (``produce`` included) the partial file is removed and `path` is left as it was.
    """
    _little_endian("write_safetensors")
    header, checked = _layout(specs, metadata)
    target = Path(path)
    partial = Path(f"{os.fspath(path)}.partial")
    try:
        with open(partial, "wb") as stream:
            stream.write(header)
            for name, dtype, shape in checked:
                tensor = produce(name)
                if not isinstance(tensor, Tensor) or tensor.dtype != dtype or tuple(tensor.shape) != shape:
                    got = f"a {tensor.dtype} tensor of shape {tuple(tensor.shape)}" if isinstance(tensor, Tensor) else type(tensor).__name__
                    raise PruneError(f"write_safetensors: tensor `{name}` was produced as {got}, but its spec says {dtype} of shape {shape}; produce what the spec says")
                if tensor.layout != torch.strided or tensor.is_meta:
                    raise PruneError(f"write_safetensors: tensor `{name}` was produced as a {tensor.layout} tensor on {tensor.device}; produce a dense tensor with values")
                for chunk in _byte_chunks(tensor):
                    stream.write(chunk)
                    del chunk
                del tensor
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(partial, target)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise


def checkpoint_files(src: str | os.PathLike[str]) -> list[Path]:
    """The safetensors files of checkpoint `src`: ``[src]`` for a ``.safetensors`` file; for a
    folder, the shards its ``model.safetensors.index.json`` maps weights to (sorted, each once)
    where it has one, else every ``*.safetensors`` file in it, sorted by name."""
    source = Path(src)
    if source.is_file():
        if source.suffix != ".safetensors":
            raise PruneError(f"checkpoint_files: `{source}` is not a .safetensors file; pass a .safetensors file or a folder of them")
        return [source]
    if not source.is_dir():
        raise PruneError(f"checkpoint_files: no file or folder `{source}`; pass a .safetensors file or a folder of them")
    index = source / _INDEX
    if not index.is_file():
        files = sorted(file for file in source.glob("*.safetensors") if file.is_file())
        if not files:
            raise PruneError(f"checkpoint_files: folder `{source}` holds no .safetensors file; pass a folder with a safetensors checkpoint")
        return files
    try:
        weight_map = json.loads(index.read_text(encoding="utf-8")).get("weight_map")
    except (UnicodeDecodeError, ValueError, AttributeError):
        weight_map = None
    if not isinstance(weight_map, dict) or not weight_map or not all(isinstance(name, str) for name in weight_map.values()):
        raise PruneError(f"checkpoint_files: `{index}` has no `weight_map` of tensor names to shard file names; repair or remove the index")
    files = []
    for name in sorted(set(weight_map.values())):
        if Path(name).name != name or not (source / name).is_file():
            raise PruneError(f"checkpoint_files: `{index}` maps weights to `{name}`, which is not a file in `{source}`; add the missing shard or repair the index")
        files.append(source / name)
    return files
