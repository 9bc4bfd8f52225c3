"""``prune_checkpoint``: a safetensors checkpoint streamed through a plan, tensor by tensor, so a
model larger than memory is pruned on disk; and ``checkpoint_weights``, a checkpoint's tensors
read one at a time when asked for (to score a model built on the meta device)."""

from __future__ import annotations

import json
import os
import resource
import shutil
import sys
import time
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import NamedTuple

import torch
from torch import Tensor
from tqdm import tqdm
from typing_extensions import Never

from .._errors import PruneError
from .._util.safetensors_stream import SafetensorsFile, checkpoint_files, read_header, read_tensor, write_safetensors
from .._util.tensor_ops import Zeros, output_shape, reads, run_ops
from ._records import Plan, Value

INDEX = "model.safetensors.index.json"
CONFIG = "config.json"


class CheckpointReport(NamedTuple):
    """What :func:`prune_checkpoint` did.

    Attributes:
        files: the files written (shards, then the index and config.json where written).
        tensors: the tensors written.
        changed: those the plan changed (or added).
        bytes_read: tensor bytes read from the source (fold weights read again count again).
        bytes_written: tensor bytes written.
        seconds: wall-clock time.
        peak_rss: the process's peak resident memory (bytes) when it returned.
    """

    files: tuple[Path, ...]
    tensors: int
    changed: int
    bytes_read: int
    bytes_written: int
    seconds: float
    peak_rss: int


def peak_rss() -> int:
    """The peak resident memory of this process so far, in bytes."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak) if sys.platform == "darwin" else int(peak) * 1024


class CheckpointWeights(Mapping[str, Tensor]):
    """A checkpoint's tensors by name, each read from disk when it is asked for (no cache):
    ``group_masks(meta_model, groups, level, weights=checkpoint_weights(path))`` scores a
    model that is never loaded whole. With a progress bar, each read advances it by the
    tensor's bytes (out of the checkpoint's)."""

    def __init__(self, files: Mapping[str, SafetensorsFile], bar: tqdm[Never] | None = None) -> None:
        self._files = dict(files)
        self._bar = bar

    def __getitem__(self, name: str) -> Tensor:
        file = self._files.get(name)
        if file is None:
            raise KeyError(name)
        value = read_tensor(file, name)
        if self._bar is not None:
            entry = file.entries[name]
            self._bar.update(entry.end - entry.begin)
        return value

    def __iter__(self) -> Iterator[str]:
        return iter(self._files)

    def __len__(self) -> int:
        return len(self._files)

    def shape(self, name: str) -> tuple[int, ...]:
        """The shape of tensor `name`, from the header (nothing is read)."""
        return self._files[name].entries[name].shape


def _headers(src: str | os.PathLike[str], caller: str) -> tuple[list[SafetensorsFile], dict[str, SafetensorsFile]]:
    try:
        files = [read_header(path) for path in checkpoint_files(src)]
    except PruneError as error:
        raise PruneError(f"{caller}: {error}") from None
    where: dict[str, SafetensorsFile] = {}
    for file in files:
        for name in file.entries:
            if where.setdefault(name, file) is not file:
                raise PruneError(f"{caller}: `{name}` is in two shards ({where[name].path.name}, {file.path.name}); fix the checkpoint")
    return files, where


def checkpoint_weights(src: str | os.PathLike[str], *, progress: bool = False) -> CheckpointWeights:
    """The tensors of a safetensors checkpoint (a file, or a folder of shards), by name, read
    one at a time on access: a model built on the meta device is scored without loading it
    (``group_masks(..., weights=checkpoint_weights(path))``). With `progress`, a tqdm bar (on
    stderr) counts the bytes read, out of the checkpoint's (scoring reads the layers it scores,
    each once)."""
    files, where = _headers(src, "checkpoint_weights")
    if not progress:
        return CheckpointWeights(where)
    total = sum(e.end - e.begin for f in files for e in f.entries.values())
    return CheckpointWeights(where, tqdm(total=total, unit="B", unit_scale=True, desc="reading the checkpoint"))


def _set_path(document: dict[str, object], path: str, value: Value) -> None:
    *parents, name = path.split(".")
    target = document
    for part in parents:
        inner = target.get(part)
        if not isinstance(inner, dict):
            raise PruneError(f"prune_checkpoint: the plan sets config field `{path}`, but config.json has no `{part}` section")
        target = inner
    target[name] = list(value) if isinstance(value, tuple) else value


def _check_fits(plan: Plan, where: Mapping[str, SafetensorsFile]) -> None:
    for name, file in where.items():
        expected = plan.shapes.get(name)
        if expected is None:
            raise PruneError(
                f"prune_checkpoint: `{name}` in {file.path.name} is not a tensor of the plan's model ({plan.architecture}); "
                "the checkpoint is of another architecture: make the plan for its model"
            )
        shape = file.entries[name].shape
        if shape != expected:
            raise PruneError(
                f"prune_checkpoint: `{name}` is {list(shape)} in {file.path.name}, {list(expected)} in the plan's model; "
                "the checkpoint is of another configuration (or already pruned): make the plan for its model"
            )
    for fqn, ops in plan.tensors.items():
        for read in reads(ops):
            if read not in where:
                raise PruneError(
                    f"prune_checkpoint: the plan computes `{fqn}` from `{read}`, which the checkpoint lacks; "
                    "pass the full checkpoint of the plan's model"
                )


def prune_checkpoint(
    plan: Plan, src: str | os.PathLike[str], dst: str | os.PathLike[str], *, progress: bool = False
) -> CheckpointReport:
    """Write the pruned checkpoint of `src` to the folder `dst`, streaming it tensor by tensor
    through `plan`: at most a few tensors are in memory at once (the one being written and the
    weights a bias fold reads), so a model larger than memory is pruned.

    Args:
        plan: from :func:`make_plan` (for a model too large to load: made on the model built
            on the meta device, with masks scored from ``checkpoint_weights(src)``).
        src: a ``.safetensors`` file, or a folder of shards (``model.safetensors.index.json``
            names them; else every ``*.safetensors`` in it).
        dst: a folder (made if missing; not `src`): one pruned shard per source shard, under
            the same names and with the same metadata; the index with the new sizes; where
            `src` is a folder with a ``config.json`` (a Hugging Face checkpoint), that config
            with the plan's config changes (the new sizes), and the folder's other files
            (tokenizer, generation config) copied.
        progress: show a progress bar (tqdm, on stderr) over the bytes read.

    Returns:
        A :class:`CheckpointReport`. The pruned tensors equal those of
        ``apply_plan(model, plan)`` for the model holding `src`'s weights, bit for bit.

    Raises:
        PruneError: a checkpoint that does not fit the plan (the first tensor that is not
            the plan's model's, or has another shape; a tensor a fold reads that is missing);
            a source that is no safetensors checkpoint; `dst` equal to `src`.
    """
    start = time.perf_counter()
    if not isinstance(plan, Plan):
        raise PruneError(f"prune_checkpoint: expects a fprune.Plan (from make_plan or Plan.from_json), got {type(plan).__name__}")
    files, where = _headers(src, "prune_checkpoint")
    _check_fits(plan, where)
    source = Path(src)
    folder = source if source.is_dir() else source.parent
    out = Path(dst)
    if out.exists() and not out.is_dir():
        raise PruneError(f"prune_checkpoint: `dst` {str(out)!r} is a file; pass a folder")
    if out.resolve() == folder.resolve():
        raise PruneError(
            "prune_checkpoint: `dst` is the folder of the source checkpoint, whose files it would overwrite; write the "
            "pruned checkpoint to another folder"
        )
    out.mkdir(parents=True, exist_ok=True)
    created: dict[str, list[str]] = {}  # a weight -> the tensors the plan adds after it (a compensated bias)
    for fqn, ops in plan.tensors.items():
        if fqn not in plan.shapes and ops and isinstance(ops[0], Zeros):
            if ops[0].like not in where:
                raise PruneError(f"prune_checkpoint: the plan adds `{fqn}` next to `{ops[0].like}`, which the checkpoint lacks")
            created.setdefault(ops[0].like, []).append(fqn)
    cache: OrderedDict[str, Tensor] = OrderedDict()
    counts = {"read": 0, "written": 0, "changed": 0, "tensors": 0}
    total = sum(e.end - e.begin for f in files for e in f.entries.values())
    bar = tqdm(total=total, unit="B", unit_scale=True, disable=not progress, desc="prune_checkpoint")

    def tensor(name: str) -> Tensor:
        found = cache.get(name)
        if found is None:
            file = where[name]
            found = read_tensor(file, name)
            counts["read"] += file.entries[name].end - file.entries[name].begin
            cache[name] = found
            while len(cache) > 2:  # the tensor being written and one a fold reads
                cache.popitem(last=False)
        return found

    def produce(name: str) -> Tensor:
        ops = plan.tensors.get(name, ())
        counts["tensors"] += 1
        if name in where:
            entry = where[name].entries[name]
            bar.update(entry.end - entry.begin)
        if not ops:
            value = tensor(name)
            cache.pop(name, None)
            return value
        counts["changed"] += 1
        value = run_ops(None if name not in where else tensor(name), ops, tensor)
        cache.pop(name, None)
        return value

    written: list[Path] = []
    sizes: dict[str, int] = {}
    try:
        for file in files:
            specs: list[tuple[str, torch.dtype, tuple[int, ...]]] = []
            for name, entry in file.entries.items():
                specs.append((name, entry.dtype, output_shape(entry.shape, plan.tensors.get(name, ()))))
                for new in created.get(name, []):
                    specs.append((new, entry.dtype, output_shape((), plan.tensors[new])))
            for name, dtype, shape in specs:
                sizes[name] = torch.Size(shape).numel() * torch.empty((), dtype=dtype).element_size()
            target = out / file.path.name
            write_safetensors(target, specs, produce, file.metadata)
            written.append(target)
    finally:
        bar.close()
    counts["written"] = sum(sizes.values())
    if source.is_dir():
        written += _write_folder_files(plan, source, out, files, sizes)
    return CheckpointReport(
        files=tuple(written),
        tensors=counts["tensors"],
        changed=counts["changed"],
        bytes_read=counts["read"],
        bytes_written=counts["written"],
        seconds=time.perf_counter() - start,
        peak_rss=peak_rss(),
    )


def _write_folder_files(plan: Plan, source: Path, out: Path, files: list[SafetensorsFile], sizes: Mapping[str, int]) -> list[Path]:
    """The index (new names and total size), config.json (the plan's config changes) and the
    folder's other files, copied."""
    written: list[Path] = []
    index = source / INDEX
    if index.is_file():
        document = json.loads(index.read_text())
        document.setdefault("metadata", {})["total_size"] = sum(sizes.values())
        document["weight_map"] = {name: file.path.name for file in files for name in file.entries}
        for name in sizes:
            first = plan.tensors[name][0] if name not in document["weight_map"] else None
            if isinstance(first, Zeros):  # a tensor the plan adds: in its weight's shard
                document["weight_map"][name] = document["weight_map"][first.like]
        (out / INDEX).write_text(json.dumps(document, indent=2, sort_keys=True) + "\n")
        written.append(out / INDEX)
    config = source / CONFIG
    if config.is_file():
        document = json.loads(config.read_text())
        for path, value in plan.config.items():
            _set_path(document, path, value)
        (out / CONFIG).write_text(json.dumps(document, indent=2, sort_keys=True) + "\n")
        written.append(out / CONFIG)
    shards = {file.path.name for file in files}
    for item in sorted(source.iterdir()):
        if item.is_file() and item.name not in shards and item.name not in (INDEX, CONFIG) and item.suffix != ".safetensors":
            shutil.copy2(item, out / item.name)
            written.append(out / item.name)
    return written
