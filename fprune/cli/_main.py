"""The ``fprune`` subcommands, argparse over fprune's functions:

- ``inspect MODULE:FACTORY``: the channel groups (:func:`fprune.channel_groups`), parameters and
  FLOPs of the model ``MODULE:FACTORY`` builds;
- ``prune MODULE:FACTORY --level L``: :func:`fprune.prune_channels`; writes the pruned copy's
  weights (``--out``), the plan of the pruning (``--plan``, :meth:`fprune.plan.Plan.to_json`)
  and a plot of the layers' widths before and after (``--plot``, with matplotlib);
- ``apply-plan MODULE:FACTORY --plan P``: :func:`fprune.plan.apply_plan`, the same pruning
  replayed on the model (with other weights: ``--weights``), without examples or criteria;
- ``prune-checkpoint --plan P SRC DST``: :func:`fprune.plan.prune_checkpoint`, a safetensors
  checkpoint streamed through the plan tensor by tensor, without building the model.

Each command is a :class:`Command` record in ``COMMANDS`` (its arguments and its run); the
options commands share (the model, its example inputs, ``--json``, ``--traceback``) are parent
parsers. A command computes a report (a JSON-ready TypedDict) and prints it as rich tables, or
as one JSON object with ``--json``. Exit codes: 0 done, 1 a failure (one line on stderr), 2 a
usage error."""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import inspect
import json
import keyword
import os
import re
import sys
import traceback
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Literal, NamedTuple, TypedDict

import torch
from rich.console import Console
from rich.table import Table
from rich.text import Text
from safetensors.torch import load_model, save_model
from torch import Tensor, fx, nn
from torch.utils.flop_counter import FlopCounterMode

from .._errors import PruneError
from .._masks import Criterion, l1_norm, l2_norm
from .._prune_channels import ChannelOptions, prune_channels
from ..groups._export import export_model
from ..groups._find import channel_groups
from ..groups._noop import explain, why_nothing_prunable
from ..groups._records import ChannelGroup, GraphKind
from ..hf._config import is_hf_model
from ..plan._make import pruned_and_plan
from ..plan._records import Plan
from ..plan._replay import apply_plan, architecture_of

PROG = "fprune"

DtypeName = Literal["long", "float"]
CRITERIA: dict[str, Criterion] = {"l1": l1_norm, "l2": l2_norm}
"""The row norms ``--criterion`` names (calibration criteria need data: not offered yet)."""


class Failure(Exception):
    """A failure the command line reports in one line on stderr, exit code 1: what went wrong
    and what to do (a model that cannot be built, inputs its forward refuses, a file)."""


# --------------------------------------------------------------------------- the reports


class InputReport(TypedDict):
    """One example input: its shape and dtype."""

    shape: list[int]
    dtype: str


class BlockerReport(TypedDict):
    """Why a group cannot be pruned: the graph node and the reason."""

    node: str
    reason: str


class GroupReport(TypedDict):
    """One channel group: its producers, size, units (0: each channel stands alone) and status."""

    producers: list[str]
    size: int
    units: int
    unit_size: int
    prunable: bool
    reaches_output: bool
    exact: bool
    blockers: list[BlockerReport]


class InspectReport(TypedDict):
    """What ``fprune inspect`` finds: the groups, the parameters, the FLOPs of one forward on
    the example inputs (None without them) and, when nothing can be pruned, why (`note`)."""

    model: str
    graph: GraphKind
    inputs: list[InputReport]
    parameters: int
    flops: int | None
    groups: list[GroupReport]
    prunable_groups: int
    note: str | None


class Counts(TypedDict):
    """A count before and after pruning."""

    before: int
    after: int


class LayerReport(TypedDict):
    """A pruned layer: its module FQN and class, and the shape of its weight (or first
    changed parameter, `tensor`) before and after."""

    name: str
    type: str
    tensor: str
    before: list[int]
    after: list[int]


class PruneReport(TypedDict):
    """What ``fprune prune`` did: its settings, parameters and FLOPs before and after, the
    pruned layers and the files it wrote (None: not asked for): the weights (`out`), the plan
    and the plot of the layers' widths."""

    model: str
    level: float
    criterion: str
    round_to: int
    ignore: list[str] | None
    inputs: list[InputReport]
    parameters: Counts
    flops: Counts | None
    layers: list[LayerReport]
    out: str | None
    plan: str | None
    plot: str | None


class ApplyPlanReport(TypedDict):
    """What ``fprune apply-plan`` did: the plan it replayed on the model (with the weights
    loaded from `weights`, None: the factory's), the parameters before and after, the pruned
    layers and the file it wrote."""

    model: str
    plan: str
    architecture: str
    weights: str | None
    parameters: Counts
    layers: list[LayerReport]
    out: str


class PruneCheckpointReport(TypedDict):
    """What ``fprune prune-checkpoint`` did: the plan, the checkpoint read (`src`) and the one
    written (`dst`: its files), the tensors written and how many of them the plan changed, the
    bytes read and written, the seconds it took and the process's peak resident memory (bytes)."""

    plan: str
    src: str
    dst: str
    files: list[str]
    tensors: int
    changed: int
    bytes_read: int
    bytes_written: int
    seconds: float
    peak_rss: int


# --------------------------------------------------------------------------- the model


@dataclass(frozen=True)
class Source:
    """``MODULE:FACTORY``: a dotted module path or a ``.py`` file, and the name (dotted for an
    attribute of an attribute) of a callable in it that returns the model."""

    module: str
    factory: str

    def __str__(self) -> str:
        return f"{self.module}:{self.factory}"


def parse_source(text: str) -> Source:
    """`text` as a :class:`Source` (an argparse type: a malformed one is a usage error)."""
    module, colon, factory = text.rpartition(":")
    if not colon or not module or not all(part.isidentifier() for part in factory.split(".")):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not MODULE:FACTORY: a dotted module path or a .py file, a colon, and the function "
            "that returns the model (e.g. mymodels.py:resnet or mypackage.models:make_model)"
        )
    return Source(module, factory)


@contextmanager
def _on_path(folder: str) -> Iterator[None]:
    """`folder` at the front of ``sys.path`` for the duration (as ``python -m`` puts the current one)."""
    added = folder not in sys.path
    if added:
        sys.path.insert(0, folder)
    try:
        yield
    finally:
        if added and folder in sys.path:
            sys.path.remove(folder)


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return f"{type(error).__name__}: {text.splitlines()[0]}" if text else type(error).__name__


def import_module(name: str) -> ModuleType:
    """The module `name`: a ``.py`` file (or any path), else a dotted module path importable
    from the current directory or the environment."""
    if name.endswith(".py") or "/" in name or os.sep in name:
        return _import_file(Path(name))
    with _on_path(os.getcwd()):
        try:
            return importlib.import_module(name)
        except ModuleNotFoundError as error:
            if error.name is not None and (name == error.name or name.startswith(f"{error.name}.")):
                raise Failure(
                    f"no module named {name!r}: pass a dotted module path importable from the current directory "
                    "(or installed), or the path of a .py file"
                ) from error
            raise Failure(f"importing {name} failed ({_first_line(error)}): install what it imports") from error
        except Exception as error:  # noqa: BLE001 - any failure of the user's module is reported alike
            raise Failure(f"importing {name} failed ({_first_line(error)}); run again with --traceback to see where") from error


def _same_file(origin: str | None, path: Path) -> bool:
    return origin is not None and Path(origin).resolve() == path.resolve()


def _file_module_name(path: Path) -> str:
    """The name to import the ``.py`` file at `path` under: its stem, as ``import stem`` from
    its folder would (so the classes it defines, and the plans made of them, are named alike
    from the file and from the dotted path), unless that name is another module's; then
    ``_fprune_cli_<stem>``, which shadows no real module."""
    stem = path.stem
    if stem.isidentifier() and not keyword.iskeyword(stem):
        loaded = sys.modules.get(stem)
        if loaded is not None:
            if _same_file(getattr(loaded, "__file__", None), path):
                return stem
        else:
            try:
                spec = importlib.util.find_spec(stem)
            except (ImportError, ValueError):
                spec = None
            if spec is None or _same_file(spec.origin, path):
                return stem
    return "_fprune_cli_" + re.sub(r"\W", "_", stem)


def _import_file(path: Path) -> ModuleType:
    if not path.is_file():
        raise Failure(f"no file {str(path)!r}: pass MODULE as a .py file that exists, or as a dotted module path")
    name = _file_module_name(path)
    loaded = sys.modules.get(name)
    if loaded is not None and _same_file(getattr(loaded, "__file__", None), path):
        return loaded  # imported already (by path, or by a dotted path from its folder)
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise Failure(f"cannot import {str(path)!r} as a Python module: pass a .py file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses and pickling look their module up there
    with _on_path(str(path.resolve().parent)):  # its sibling modules import, as for a script
        try:
            spec.loader.exec_module(module)
        except Exception as error:  # noqa: BLE001 - any failure of the user's module is reported alike
            sys.modules.pop(name, None)
            raise Failure(f"importing {path} failed ({_first_line(error)}); run again with --traceback to see where") from error
    return module


def build_model(source: Source) -> nn.Module:
    """``FACTORY()`` from ``MODULE``, in eval mode; a :class:`Failure` that says what to do if
    the module does not import, has no such callable, or it fails or returns no nn.Module."""
    module = import_module(source.module)
    target: object = module
    for part in source.factory.split("."):
        if not hasattr(target, part):
            defined = sorted(
                n for n, v in vars(module).items()
                if callable(v) and not n.startswith("_") and getattr(v, "__module__", None) == module.__name__
            )  # fmt: skip
            raise Failure(
                f"{source.module} has no {source.factory!r}; the functions and classes it defines: "
                f"{', '.join(defined) or 'none'}. Pass MODULE:FACTORY with FACTORY one that returns the model"
            )
        target = getattr(target, part)
    if not callable(target):
        raise Failure(f"{source} is a {type(target).__name__}, not a function: pass the function that returns the model")
    try:
        model = target()
    except Exception as error:  # noqa: BLE001 - any failure of the user's factory is reported alike
        raise Failure(f"{source}() failed ({_first_line(error)}); run again with --traceback to see where") from error
    if not isinstance(model, nn.Module):
        raise Failure(f"{source}() returned a {type(model).__name__}, not a torch.nn.Module: return the model")
    return model.eval()


def load_weights(model: nn.Module, path: Path) -> None:
    """Load the safetensors file at `path` into `model`, strictly (tied tensors saved once)."""
    if not path.is_file():
        raise Failure(f"no file {str(path)!r}: pass --weights a .safetensors file of the model's state_dict")
    try:
        load_model(model, str(path), strict=True)
    except Exception as error:  # noqa: BLE001 - a bad file or a mismatch is reported alike
        text = " ".join(str(error).split())
        text = text if len(text) <= 300 else f"{text[:300]}..."
        raise Failure(
            f"{path} does not load into the model ({type(error).__name__}: {text}): pass the weights of this "
            "very architecture, saved with safetensors (safetensors.torch.save_model or save_file)"
        ) from error


# --------------------------------------------------------------------------- the inputs


@dataclass(frozen=True)
class Inputs:
    """The example inputs to build: one shape and one dtype name per input."""

    shapes: tuple[tuple[int, ...], ...]
    dtypes: tuple[DtypeName, ...]

    def report(self, tensors: Sequence[Tensor]) -> list[InputReport]:
        """The shapes and dtypes of `tensors` (built from this record)."""
        return [InputReport(shape=list(t.shape), dtype=str(t.dtype).removeprefix("torch.")) for t in tensors]


def parse_shape(text: str) -> tuple[int, ...]:
    """``"1,3,32,32"`` (or ``"1x3x32x32"``) as a shape (an argparse type)."""
    parts = [p.strip() for p in re.split(r"[,x]", text.strip().strip("()[]"))]
    if not parts or not all(p.isdigit() and int(p) > 0 for p in parts):
        raise argparse.ArgumentTypeError(f"{text!r} is not a shape: write its sizes with commas, e.g. 1,3,32,32")
    return tuple(int(p) for p in parts)


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive integer")
    return int(text)


def _vocab_size(model: nn.Module) -> int | None:
    size = getattr(getattr(model, "config", None), "vocab_size", None)
    return size if isinstance(size, int) and size > 0 else None


def make_inputs(model: nn.Module, inputs: Inputs) -> tuple[Tensor, ...]:
    """Seeded example inputs on the model's device: ``float`` ones normal in the model's float
    dtype, ``long`` ones (token ids) in ``[0, vocab_size)`` for a model whose config has one,
    else in ``[0, 2)``."""
    generator = torch.Generator().manual_seed(0)
    floating = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    bound = _vocab_size(model) or 2
    tensors = []
    for shape, dtype in zip(inputs.shapes, inputs.dtypes):
        if dtype == "long":
            tensor = torch.randint(0, bound, shape, generator=generator)
        else:
            tensor = torch.randn(shape, generator=generator).to(floating)
        tensors.append(tensor.to(device))
    return tuple(tensors)


def forward_kwargs(model: nn.Module) -> dict[str, object]:
    """``{"use_cache": False}`` when the model's forward takes `use_cache` (no cache object to
    export or count), else nothing."""
    try:
        parameters = inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return {}
    return {"use_cache": False} if "use_cache" in parameters else {}


def count_flops(model: nn.Module, tensors: Sequence[Tensor], kwargs: dict[str, object]) -> int:
    """FLOPs of one forward on `tensors` (``torch.utils.flop_counter.FlopCounterMode``)."""
    counter = FlopCounterMode(display=False)
    try:
        with torch.no_grad(), counter:
            model(*tensors, **kwargs)
    except Exception as error:  # noqa: BLE001 - any failure of the user's forward is reported alike
        shapes = ", ".join("x".join(map(str, t.shape)) + f" {str(t.dtype).removeprefix('torch.')}" for t in tensors)
        raise Failure(
            f"the model's forward failed on the example inputs ({shapes}): {_first_line(error)}; pass the shapes and "
            "dtypes it takes with --input-shape and --dtype"
        ) from error
    return int(counter.get_total_flops())


def _inputs_of(args: argparse.Namespace, parser: argparse.ArgumentParser) -> Inputs:
    """The :class:`Inputs` the arguments ask for; a usage error (exit 2) for a dtype count that
    is neither one nor one per shape."""
    shapes: list[tuple[int, ...]] = list(args.input_shape or [])
    dtypes: list[DtypeName] = list(args.dtype or [])
    if dtypes and not shapes:
        parser.error("--dtype needs --input-shape: it gives the dtype of the example inputs")
    if len(dtypes) not in (0, 1, len(shapes)):
        parser.error(f"give --dtype once (for every input) or once per --input-shape ({len(shapes)}), not {len(dtypes)} times")
    if len(dtypes) <= 1:
        dtypes = (dtypes or ["float"]) * len(shapes)
    return Inputs(tuple(shapes), tuple(dtypes))


def _needs_export(model: nn.Module, hf: bool) -> bool:
    return hf or is_hf_model(model)


def _export_needs_inputs(source: Source) -> Failure:
    return Failure(
        f"{source} is read through torch.export (a Hugging Face model, or --hf), which runs it on example "
        "inputs: pass --input-shape (token ids: --input-shape 1,16 --dtype long)"
    )


# --------------------------------------------------------------------------- output helpers


def _status(text: str) -> AbstractContextManager[object]:
    """A spinner with `text` on stderr while a long step runs, when stderr is a terminal."""
    if sys.stderr.isatty():
        return Console(stderr=True).status(text)
    return nullcontext()


def _console() -> Console:
    return Console(file=sys.stdout, highlight=False)


def _print_json(report: Mapping[str, object]) -> None:
    sys.stdout.write(json.dumps(report, indent=2) + "\n")


def _human(count: int) -> str:
    for size, suffix in ((10**12, "T"), (10**9, "G"), (10**6, "M"), (10**3, "k")):
        if count >= size:
            return f"{count / size:.3g}{suffix}"
    return str(count)


def _count(count: int) -> str:
    return f"{count:,}" + (f" ({_human(count)})" if count >= 1000 else "")


def _bytes(count: int) -> str:
    """`count` bytes in binary units: ``"512 B"``, ``"1.5 KiB"``, ``"13.5 GiB"``."""
    if count < 1024:
        return f"{count} B"
    value, unit = float(count), "B"
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        value /= 1024
        if value < 1024:
            break
    return f"{value:.3g} {unit}" if value < 999.5 else f"{value:.0f} {unit}"


def _parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())  # a tied tensor once


def _inputs_line(inputs: list[InputReport]) -> str:
    return ", ".join("x".join(map(str, i["shape"])) + f" {i['dtype']}" for i in inputs)


# --------------------------------------------------------------------------- inspect


def find_groups(
    model: nn.Module, tensors: Sequence[Tensor], kwargs: dict[str, object], *, export: bool, source: Source
) -> tuple[tuple[ChannelGroup, ...], GraphKind]:
    """The channel groups of `model`: from ``torch.fx.symbolic_trace``, or from
    ``torch.export`` (strict=False) when `export` is asked or fx fails and inputs are given."""
    if not export:
        try:
            gm = fx.symbolic_trace(model)
        except Exception as error:  # noqa: BLE001 - any tracing failure means: try torch.export
            if not tensors:
                raise Failure(
                    f"torch.fx cannot trace {source} ({_first_line(error)}): pass --input-shape (and --dtype) so that "
                    "fprune reads it through torch.export"
                ) from error
        else:
            return channel_groups(gm, example_inputs=tuple(tensors) or None), "fx"
    if not tensors:
        raise _export_needs_inputs(source)
    program = export_model(model, tensors, kwargs, "fprune inspect")
    return channel_groups(program), "export"


def group_report(group: ChannelGroup) -> GroupReport:
    """`group` as a JSON-ready record."""
    return GroupReport(
        producers=list(group.producers),
        size=group.size,
        units=len(group.units),
        unit_size=len(group.units[0]) if group.units else 1,
        prunable=group.prunable,
        reaches_output=group.reaches_output,
        exact=group.exact,
        blockers=[BlockerReport(node=b.node, reason=b.reason) for b in group.blockers],
    )


def run_inspect(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    """``fprune inspect``: print the channel groups, parameters and FLOPs of the model."""
    source: Source = args.model
    inputs = _inputs_of(args, parser)
    with _status(f"building {source}"):
        model = build_model(source)
    export = _needs_export(model, bool(args.hf))
    tensors = make_inputs(model, inputs)
    kwargs = forward_kwargs(model)
    flops = None
    if tensors:
        with _status("counting FLOPs"):
            flops = count_flops(model, tensors, kwargs)
    with _status("finding channel groups" + (" (torch.export)" if export else "")):
        groups, graph = find_groups(model, tensors, kwargs, export=export, source=source)
    report = InspectReport(
        model=str(source),
        graph=graph,
        inputs=inputs.report(tensors),
        parameters=_parameters(model),
        flops=flops,
        groups=[group_report(g) for g in groups],
        prunable_groups=sum(g.prunable for g in groups),
        note=why_nothing_prunable(groups),
    )
    if args.json:
        _print_json(report)
        return
    console = _console()
    render_inspect(report, console)
    if args.verbose:
        console.print(Text(explain(groups)))


def _status_cell(group: GroupReport) -> Text:
    if group["prunable"]:
        text = "prunable"
        if not group["exact"]:
            text += ', NOT output-exact (norms="renormalize")'
        if group["reaches_output"]:
            text += " (returned by forward: prune keeps it unless --ignore)"
        return Text(text, style="green")
    if group["blockers"]:
        first = group["blockers"][0]
        more = f" (+{len(group['blockers']) - 1} more)" if len(group["blockers"]) > 1 else ""
        return Text(f"blocked at {first['node']}: {first['reason']}{more}", style="red")
    return Text("no producer: the model's input channels", style="dim")


def _producers_cell(producers: list[str]) -> Text:
    shown = producers[:3] + ([f"(+{len(producers) - 3} more)"] if len(producers) > 3 else [])
    return Text("\n".join(shown) or "-")


def render_inspect(report: InspectReport, console: Console) -> None:
    """`report` as a table of groups, then the totals."""
    table = Table(title=f"channel groups of {report['model']} ({report['graph']} graph)", title_justify="left")
    table.add_column("#", justify="right")
    table.add_column("producers", overflow="fold")
    table.add_column("size", justify="right")
    table.add_column("units", justify="right")
    table.add_column("status")
    for index, group in enumerate(report["groups"]):
        units = f"{group['units']}x{group['unit_size']}" if group["units"] else "-"
        table.add_row(str(index), _producers_cell(group["producers"]), str(group["size"]), units, _status_cell(group))
    console.print(table)
    totals = Table.grid(padding=(0, 2))
    totals.add_row("parameters", _count(report["parameters"]))
    totals.add_row("channel groups", f"{len(report['groups'])}, {report['prunable_groups']} prunable")
    if report["flops"] is not None:
        totals.add_row("FLOPs", f"{_count(report['flops'])}, one forward on {_inputs_line(report['inputs'])}")
    else:
        totals.add_row("FLOPs", "pass --input-shape to count them")
    console.print(totals)
    if report["note"] is not None:
        console.print(Text(report["note"], style="yellow"))


# --------------------------------------------------------------------------- files


def _check_folder(path: Path, option: str) -> None:
    """A :class:`Failure` before any work when the folder `path` is to be written in is missing."""
    if not path.parent.is_dir():
        raise Failure(
            f"cannot write {option} {str(path)!r}: the folder {str(path.parent)!r} does not exist; create it or pass "
            "another path"
        )


def save_weights(pruned: nn.Module, out: Path, metadata: dict[str, str]) -> None:
    """The pruned copy's state_dict as safetensors at `out` (contiguous; tied tensors once)."""
    if not out.parent.is_dir():
        raise Failure(f"cannot write {str(out)!r}: the folder {str(out.parent)!r} does not exist")
    try:
        save_model(pruned, str(out), metadata=metadata)
    except OSError as error:
        raise Failure(f"cannot write {str(out)!r} ({_first_line(error)})") from error


def write_plan(plan: Plan, path: Path) -> None:
    """`plan` as JSON (:meth:`Plan.to_json`) at `path`."""
    try:
        path.write_text(plan.to_json(), encoding="utf-8")
    except OSError as error:
        raise Failure(f"cannot write the plan {str(path)!r} ({_first_line(error)})") from error


def read_plan(path: Path) -> Plan:
    """The plan in the JSON file at `path` (what ``fprune prune --plan`` or
    :meth:`Plan.to_json` wrote); a :class:`Failure` that says what to pass for a missing or
    unreadable file, or one that is no plan this fprune reads."""
    if not path.is_file():
        raise Failure(f"no file {str(path)!r}: pass --plan the JSON file that `fprune prune --plan` (or Plan.to_json) wrote")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise Failure(
            f"cannot read the plan {str(path)!r} ({_first_line(error)}): pass --plan the JSON file that "
            "`fprune prune --plan` wrote"
        ) from error
    try:
        return Plan.from_json(text)
    except PruneError as error:
        raise Failure(f"{path} is no plan this fprune reads ({error})") from error


# --------------------------------------------------------------------------- the width plot


class LayerWidth(NamedTuple):
    """A pruned layer's bar in the width plot: the layer, the tensor and dim shown (dim 0, a
    layer's outputs, where it changed, else the first dim that did), its size before and after."""

    name: str
    tensor: str
    dim: int
    before: int
    after: int


def layer_widths(layers: Sequence[LayerReport]) -> list[LayerWidth]:
    """The width of each layer in `layers` (in their order) before and after pruning."""
    widths: list[LayerWidth] = []
    for layer in layers:
        before, after = layer["before"], layer["after"]
        dims = [d for d, (b, a) in enumerate(zip(before, after)) if b != a]
        if len(before) == len(after) and dims:
            dim = 0 if 0 in dims else dims[0]
            widths.append(LayerWidth(layer["name"], layer["tensor"], dim, before[dim], after[dim]))
    return widths


def _require_matplotlib() -> None:
    """A :class:`Failure` saying how to install matplotlib when it is missing (before any work)."""
    if importlib.util.find_spec("matplotlib") is None:
        raise Failure("--plot needs matplotlib, which is not installed: pip install matplotlib (or leave out --plot)")


def write_plot(widths: Sequence[LayerWidth], path: Path, title: str) -> None:
    """A PNG at `path`: one row per layer, in order from the top, with its width before (grey)
    and after (blue) pruning. Drawn with matplotlib's Agg canvas (no display, pyplot's state
    untouched)."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as error:
        raise Failure(f"--plot needs matplotlib, which does not import ({_first_line(error)}): pip install matplotlib") from error
    figure = Figure(figsize=(8.0, min(1.6 + 0.3 * len(widths), 300.0)), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    rows = list(range(len(widths)))
    labels = [
        w.name if (w.tensor, w.dim) == ("weight", 0) else f"{w.name} ({'' if w.tensor == 'weight' else w.tensor + ' '}dim {w.dim})"
        for w in widths
    ]  # fmt: skip
    axes.barh(rows, [w.before for w in widths], height=0.8, color="#c8c8c8", label="before")
    axes.barh(rows, [w.after for w in widths], height=0.5, color="#1f77b4", label="after")
    for row, width in zip(rows, widths):
        axes.annotate(
            f" {width.after} / {width.before}", (width.before, row), va="center", fontsize=8, annotation_clip=False
        )  # fmt: skip
    axes.set_yticks(rows, labels, fontsize=8)
    axes.set_ylim(len(widths) - 0.5, -0.5)  # the model's order, top to bottom
    axes.set_xlim(0, max((w.before for w in widths), default=1) * 1.2)
    axes.set_xlabel("width: channels / features (dim 0 of the weight, else the dim pruned)")
    axes.set_title(title, fontsize=10, loc="left")
    if widths:
        axes.legend(loc="lower right", bbox_to_anchor=(1.0, 1.0), ncols=2, fontsize=8, frameon=False)
    else:
        axes.text(0.5, 0.5, "no layer changed width", ha="center", va="center", transform=axes.transAxes)
    try:
        figure.savefig(path, format="png", dpi=100)
    except OSError as error:
        raise Failure(f"cannot write the plot {str(path)!r} ({_first_line(error)})") from error


# --------------------------------------------------------------------------- prune


def changed_layers(model: nn.Module, pruned: nn.Module) -> list[LayerReport]:
    """The modules of `pruned` whose own parameters changed shape, each with its weight's shape
    (or its first changed parameter's) in `model` and in `pruned`."""
    before = {fqn: list(p.shape) for fqn, p in model.named_parameters(remove_duplicate=False)}
    layers: list[LayerReport] = []
    for name, module in pruned.named_modules():
        changed = [
            (tensor, list(p.shape)) for tensor, p in module.named_parameters(recurse=False)
            if before.get(f"{name}.{tensor}" if name else tensor, list(p.shape)) != list(p.shape)
        ]  # fmt: skip
        if changed:
            tensor, after = next((c for c in changed if c[0] == "weight"), changed[0])
            layers.append(
                LayerReport(
                    name=name or "(model)", type=type(module).__name__, tensor=tensor,
                    before=before[f"{name}.{tensor}" if name else tensor], after=after,
                )
            )  # fmt: skip
    return layers


def _optional_path(text: str | None) -> Path | None:
    return None if text is None else Path(text)


def run_prune(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    """``fprune prune``: prune the model with :func:`fprune.prune_channels`; write the pruned
    copy's weights (--out), the plan of the pruning (--plan, from the same pruning) and the
    width plot (--plot); print what changed."""
    source: Source = args.model
    inputs = _inputs_of(args, parser)
    level: float = args.level
    out, plan_file, plot = _optional_path(args.out), _optional_path(args.plan), _optional_path(args.plot)
    if out is None and plan_file is None:
        parser.error("give --out FILE (the pruned copy's weights), --plan FILE (the plan of the pruning), or both")
    for path, option in ((out, "--out"), (plan_file, "--plan"), (plot, "--plot")):
        if path is not None:
            _check_folder(path, option)
    if plot is not None:
        _require_matplotlib()
    meta: bool = args.meta
    if meta and (args.weights is None or plan_file is None or out is not None):
        parser.error(
            "--meta builds the model without its weights and scores it from the checkpoint --weights names: give "
            "--weights CHECKPOINT and --plan FILE (not --out: the copy has no values; stream the checkpoint with "
            "`fprune prune-checkpoint`)"
        )
    scores: Mapping[str, Tensor] | None = None
    with _status(f"building {source}" + (" on the meta device" if meta else "")):
        if meta:
            from ..plan._checkpoint import checkpoint_weights
            from ..plan._load import parameters_on_meta

            with parameters_on_meta():
                model = build_model(source)
            if not Path(args.weights).exists():
                raise Failure(f"no file or folder {str(args.weights)!r}: pass --weights the checkpoint (a .safetensors file or a folder of shards)")
            scores = checkpoint_weights(Path(args.weights), progress=not args.json and sys.stderr.isatty())
        else:
            model = build_model(source)
            if args.weights is not None:
                load_weights(model, Path(args.weights))
    export = _needs_export(model, bool(args.hf))
    tensors = make_inputs(model, inputs)
    if export and not tensors:
        raise _export_needs_inputs(source)
    kwargs = forward_kwargs(model)
    flops_before = None
    if tensors and not meta:
        with _status("counting FLOPs"):
            flops_before = count_flops(model, tensors, kwargs)
    ignore: list[str] | None = None if args.ignore is None else list(args.ignore)
    options = ChannelOptions(
        example_inputs=tensors or None, graph="export" if export else "auto", ignore=ignore, round_to=args.round_to,
        criterion=CRITERIA[args.criterion], weights=scores,
    )  # fmt: skip
    plan: Plan | None = None
    pruning = f"pruning {source} at level {level}" + (" and recording the plan" if plan_file else "")
    with nullcontext() if meta else _status(pruning):  # with --meta, the progress bar of the checkpoint's reads instead
        if plan_file is None:
            pruned = prune_channels(model, level, **options)
        else:
            pruned, plan = pruned_and_plan(model, level, **options)
    flops = None
    if flops_before is not None:
        with _status("counting FLOPs of the pruned copy"):
            flops = Counts(before=flops_before, after=count_flops(pruned, tensors, kwargs))
    layers = changed_layers(model, pruned)
    if out is not None:
        with _status(f"writing {out}"):
            save_weights(pruned, out, {"format": "pt", "fprune.model": str(source), "fprune.level": repr(level)})
    if plan_file is not None and plan is not None:
        write_plan(plan, plan_file)
    if plot is not None:
        with _status(f"plotting {plot}"):
            write_plot(layer_widths(layers), plot, f"{source} pruned at level {level}")
    report = PruneReport(
        model=str(source),
        level=level,
        criterion=args.criterion,
        round_to=args.round_to,
        ignore=ignore,
        inputs=inputs.report(tensors),
        parameters=Counts(before=_parameters(model), after=_parameters(pruned)),
        flops=flops,
        layers=layers,
        out=None if out is None else str(out),
        plan=None if plan_file is None else str(plan_file),
        plot=None if plot is None else str(plot),
    )
    if args.json:
        _print_json(report)
    else:
        render_prune(report, _console())


def _counts_table(title: str, rows: Sequence[tuple[str, Counts]]) -> Table:
    table = Table(title=title, title_justify="left")
    table.add_column("")
    table.add_column("before", justify="right")
    table.add_column("after", justify="right")
    table.add_column("kept", justify="right")
    for name, counts in rows:
        kept = f"{counts['after'] / counts['before']:.1%}" if counts["before"] else "-"
        table.add_row(name, _count(counts["before"]), _count(counts["after"]), kept)
    return table


def _layers_table(layers: Sequence[LayerReport]) -> Table:
    table = Table(title="pruned layers", title_justify="left")
    for column in ("layer", "type", "before", "after"):
        table.add_column(column, overflow="fold")
    for layer in layers:
        tensor = "" if layer["tensor"] == "weight" else f" ({layer['tensor']})"
        table.add_row(
            Text(layer["name"] + tensor), layer["type"], "x".join(map(str, layer["before"])), "x".join(map(str, layer["after"]))
        )
    return table


def _wrote(console: Console, *paths: str | None) -> None:
    for path in paths:
        if path is not None:
            console.print(Text(f"wrote {path}"))


def render_prune(report: PruneReport, console: Console) -> None:
    """`report` as a before / after table, the pruned layers, and the files written."""
    rows = [("parameters", report["parameters"])] + ([("FLOPs", report["flops"])] if report["flops"] is not None else [])
    console.print(_counts_table(f"{report['model']} pruned at level {report['level']}", rows))
    if report["flops"] is not None:
        console.print(f"FLOPs of one forward on {_inputs_line(report['inputs'])}")
    console.print(_layers_table(report["layers"]))
    _wrote(console, report["out"], report["plan"], report["plot"])


# --------------------------------------------------------------------------- apply-plan


def _apply(model: nn.Module, plan: Plan, source: Source) -> nn.Module:
    """:func:`apply_plan`; a :class:`Failure` with a hint when the plan's class is the model's
    imported under another module name (a .py file against a dotted path)."""
    try:
        return apply_plan(model, plan)
    except PruneError as error:
        here = architecture_of(model)
        if here != plan.architecture and here.rpartition(".")[2] == plan.architecture.rpartition(".")[2]:
            raise Failure(
                f"{error} (a class of the same name from another module: pass the MODULE the plan was made from, "
                f"{plan.architecture.rpartition('.')[0]}, not {source.module})"
            ) from error
        raise


def run_apply_plan(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    """``fprune apply-plan``: replay the plan on the model (with --weights loaded), write the
    pruned copy's weights, print what changed."""
    source: Source = args.model
    plan_file, out = Path(args.plan), Path(args.out)
    _check_folder(out, "--out")
    plan = read_plan(plan_file)
    with _status(f"building {source}"):
        model = build_model(source)
        if args.weights is not None:
            load_weights(model, Path(args.weights))
    with _status(f"applying {plan_file}"):
        pruned = _apply(model, plan, source)
    with _status(f"writing {out}"):
        save_weights(pruned, out, {"format": "pt", "fprune.model": str(source), "fprune.plan": plan.fingerprint})
    report = ApplyPlanReport(
        model=str(source),
        plan=str(plan_file),
        architecture=plan.architecture,
        weights=args.weights,
        parameters=Counts(before=_parameters(model), after=_parameters(pruned)),
        layers=changed_layers(model, pruned),
        out=str(out),
    )
    if args.json:
        _print_json(report)
    else:
        render_apply_plan(report, _console())


def render_apply_plan(report: ApplyPlanReport, console: Console) -> None:
    """`report` as a before / after table, the pruned layers, and the file written."""
    weights = "" if report["weights"] is None else f" with the weights of {report['weights']}"
    console.print(_counts_table(f"{report['model']}{weights}, pruned by {report['plan']}", [("parameters", report["parameters"])]))
    console.print(_layers_table(report["layers"]))
    _wrote(console, report["out"])


# --------------------------------------------------------------------------- prune-checkpoint


def run_prune_checkpoint(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    """``fprune prune-checkpoint``: stream the checkpoint SRC through the plan into the folder
    DST, tensor by tensor (:func:`fprune.plan.prune_checkpoint`), without building the model."""
    from ..plan._checkpoint import prune_checkpoint

    plan_file, src, dst = Path(args.plan), Path(args.src), Path(args.dst)
    if not src.exists():
        raise Failure(f"no file or folder {str(src)!r}: pass SRC a .safetensors file or a folder of them (a checkpoint)")
    if dst.resolve() == (src.resolve() if src.is_dir() else src.resolve().parent):
        raise Failure(
            f"DST {str(dst)!r} is the folder of SRC: the pruned checkpoint would replace it; pass another folder"
        )  # fmt: skip
    plan = read_plan(plan_file)
    progress = not args.json and not args.no_progress and sys.stderr.isatty()
    try:
        done = prune_checkpoint(plan, src, dst, progress=progress)
    except OSError as error:
        raise Failure(f"pruning the checkpoint {str(src)!r} into {str(dst)!r} failed ({_first_line(error)})") from error
    report = PruneCheckpointReport(
        plan=str(plan_file),
        src=str(src),
        dst=str(dst),
        files=[str(file) for file in done.files],
        tensors=done.tensors,
        changed=done.changed,
        bytes_read=done.bytes_read,
        bytes_written=done.bytes_written,
        seconds=done.seconds,
        peak_rss=done.peak_rss,
    )
    if args.json:
        _print_json(report)
    else:
        render_prune_checkpoint(report, _console())


def render_prune_checkpoint(report: PruneCheckpointReport, console: Console) -> None:
    """`report` as one table: files, tensors, bytes, time and peak memory."""
    table = Table(title=f"{report['src']} pruned by {report['plan']}", title_justify="left", show_header=False)
    table.add_column("")
    table.add_column("", justify="right", overflow="fold")
    files = report["files"]
    shown = [Path(f).name for f in files[:4]] + ([f"(+{len(files) - 4} more)"] if len(files) > 4 else [])
    table.add_row("files written", f"{len(files)}: " + ", ".join(shown) if files else "0")
    table.add_row("tensors", f"{report['tensors']:,}")
    table.add_row("tensors changed", f"{report['changed']:,}")
    table.add_row("read", _bytes(report["bytes_read"]))
    kept = f" ({report['bytes_written'] / report['bytes_read']:.1%})" if report["bytes_read"] else ""
    table.add_row("written", _bytes(report["bytes_written"]) + kept)
    rate = f" ({_bytes(round(report['bytes_read'] / report['seconds']))}/s read)" if report["seconds"] > 0 else ""
    table.add_row("time", f"{report['seconds']:.2f} s{rate}")
    table.add_row("peak RSS", _bytes(report["peak_rss"]))
    console.print(table)
    _wrote(console, report["dst"])


# --------------------------------------------------------------------------- the parser


class Command(NamedTuple):
    """A subcommand: its name, one-line help, the arguments it adds (besides the shared parent
    parsers it names), what it runs, and the longer description its ``--help`` shows."""

    name: str
    summary: str
    parents: tuple[Callable[[], argparse.ArgumentParser], ...]
    arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace, argparse.ArgumentParser], None]
    description: str = ""


def _source_options() -> argparse.ArgumentParser:
    """MODULE:FACTORY: what every command that builds the model takes."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument(
        "model", type=parse_source, metavar="MODULE:FACTORY",
        help="a dotted module path (importable from the current directory) or a .py file, and the function in it "
        "that returns the model (called without arguments; the model is put in eval mode)",
    )  # fmt: skip
    return parser


def _model_options() -> argparse.ArgumentParser:
    """MODULE:FACTORY and the example inputs: what the commands that trace the model take."""
    parser = argparse.ArgumentParser(add_help=False, parents=[_source_options()])
    inputs = parser.add_argument_group("example inputs")
    inputs.add_argument(
        "--input-shape", action="append", type=parse_shape, metavar="SHAPE",
        help="the shape of one example input, e.g. 1,3,32,32; repeat it for a forward that takes several inputs. "
        "Needed for FLOPs, for shapes that decide channel layouts (flatten, attention heads), and for models read "
        "through torch.export (Hugging Face models, or where torch.fx fails)",
    )  # fmt: skip
    inputs.add_argument(
        "--dtype", action="append", choices=("long", "float"),
        help="the example inputs' dtype, once for all or once per --input-shape: float (normal values in the "
        "model's float dtype, the default) or long (token ids in [0, config.vocab_size), else in [0, 2))",
    )  # fmt: skip
    inputs.add_argument(
        "--hf", action="store_true",
        help="read the model through torch.export (strict=False, use_cache=False when forward takes it), as for "
        "Hugging Face models (the default for a transformers PreTrainedModel)",
    )  # fmt: skip
    return parser


def _output_options() -> argparse.ArgumentParser:
    """--json and --traceback: what every command takes."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--json", action="store_true", help="print one JSON object on stdout instead of tables")
    parser.add_argument("--traceback", action="store_true", help="print the traceback of a failure (exit code 1)")
    return parser


def _inspect_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-v", "--verbose", action="store_true", help="also print fprune.explain's report: every member of every group")


def _prune_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--level", type=float, required=True, help="the fraction of each group's channels to remove, in [0, 1)")
    written = parser.add_argument_group("what to write (--out, --plan or both)")
    written.add_argument("--out", metavar="FILE", help="where to write the pruned copy's state_dict (.safetensors)")
    written.add_argument(
        "--plan", metavar="FILE",
        help="where to write the plan of this pruning (JSON: the kept channels of each tensor, the new attributes "
        "and config fields). Replay it with `fprune apply-plan` on other weights of the same model, or on a "
        "checkpoint with `fprune prune-checkpoint`",
    )  # fmt: skip
    parser.add_argument(
        "--meta", action="store_true",
        help="for a model larger than memory: build it with its parameters on the meta device (nothing allocated), "
        "score its channels from the checkpoint --weights names (a .safetensors file or a folder of shards), one "
        "tensor at a time, and write only the plan (--plan); then prune the checkpoint with `fprune prune-checkpoint`",
    )  # fmt: skip
    parser.add_argument(
        "--plot", metavar="FILE",
        help="also write a PNG of each pruned layer's width (channels / features) before and after, in model "
        "order; needs matplotlib (pip install matplotlib)",
    )  # fmt: skip
    parser.add_argument(
        "--weights", metavar="FILE",
        help="a .safetensors state_dict to load into the model first (strict); with --meta, the checkpoint to score "
        "from (a .safetensors file or a folder of shards)",
    )  # fmt: skip
    parser.add_argument(
        "--round-to", type=_positive, default=1, metavar="N",
        help="round each group's kept count to a multiple of N (ties up; default 1)",
    )  # fmt: skip
    parser.add_argument(
        "--criterion", choices=tuple(CRITERIA), default="l2",
        help="how channels are ranked: the l1 or l2 norm of their weights' rows, summed over a group (default l2). "
        "The calibration criteria (flap, wanda_sp, activation, taylor) need data and are not offered here yet: "
        "use fprune.prune_channels(..., calibration=...) in Python",
    )  # fmt: skip
    parser.add_argument(
        "--ignore", nargs="*", action="extend", metavar="FQN",
        help="tensor or module FQNs never to prune. Without --ignore, the groups forward returns are kept whole "
        "(the classifier keeps its outputs); --ignore with no FQN prunes them too",
    )  # fmt: skip


def _apply_plan_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--plan", required=True, metavar="FILE",
        help="the plan to replay: the JSON file `fprune prune --plan` (or fprune.plan.Plan.to_json) wrote for this "
        "model",
    )  # fmt: skip
    parser.add_argument(
        "--weights", metavar="FILE",
        help="a .safetensors state_dict to load into the model first (strict), e.g. a fine-tuned one; without it, "
        "the factory's weights",
    )  # fmt: skip
    parser.add_argument("--out", required=True, metavar="FILE", help="where to write the pruned copy's state_dict (.safetensors)")


def _prune_checkpoint_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--plan", required=True, metavar="FILE",
        help="the plan to stream the checkpoint through: the JSON file `fprune prune --plan` wrote for the model "
        "whose state_dict the checkpoint holds",
    )  # fmt: skip
    parser.add_argument("src", metavar="SRC", help="the checkpoint: a .safetensors file, or a folder of safetensors shards")
    parser.add_argument(
        "dst", metavar="DST",
        help="the folder to write the pruned checkpoint to (made if missing; not SRC's folder): each shard under its "
        "name, and for a folder SRC its index and config.json with the new sizes, and its other files copied",
    )  # fmt: skip
    parser.add_argument(
        "--no-progress", action="store_true",
        help="show no progress bar on stderr (none shows with --json, or when stderr is not a terminal)",
    )  # fmt: skip


_PRUNE_DESCRIPTION = (
    "Prune a model with fprune.prune_channels (each channel group keeps its largest channels by --criterion) "
    "and write the pruned copy's weights (--out), the plan of the pruning (--plan), or both; --plot draws each "
    "layer's width before and after. Load the weights with fprune.plan.load_pruned(FACTORY, plan, weights)."
)
_APPLY_PLAN_DESCRIPTION = (
    "Replay a plan (from `fprune prune --plan`) on the model MODULE:FACTORY builds, with the weights of --weights "
    "loaded into it (say, fine-tuned since the plan was made), and write the pruned copy's weights: the very pruning "
    "the plan records, without example inputs or a criterion. The model must be the architecture the plan was made "
    "for (the same class, tensor names and shapes)."
)
_PRUNE_CHECKPOINT_DESCRIPTION = (
    "Prune a safetensors checkpoint (a file, or a folder of shards) with a plan, one tensor at a time, without "
    "building the model or holding the checkpoint in memory. Make the plan with `fprune prune --plan` on the model "
    "the checkpoint holds the weights of (the plan's kept channels are those its weights ranked first: pass "
    "--weights for weights other than the factory's); SRC's tensors must have the names and shapes of that model's "
    "state_dict."
)

COMMANDS: tuple[Command, ...] = (
    Command("inspect", "show a model's channel groups, parameters and FLOPs", (_model_options, _output_options), _inspect_arguments, run_inspect),
    Command(
        "prune", "prune a model with fprune.prune_channels; write its weights (safetensors) and / or its plan (JSON)",
        (_model_options, _output_options), _prune_arguments, run_prune, _PRUNE_DESCRIPTION,
    ),  # fmt: skip
    Command(
        "apply-plan", "replay a plan on a model (with other weights) and write the pruned weights",
        (_source_options, _output_options), _apply_plan_arguments, run_apply_plan, _APPLY_PLAN_DESCRIPTION,
    ),  # fmt: skip
    Command(
        "prune-checkpoint", "prune a safetensors checkpoint with a plan, tensor by tensor, without the model",
        (_output_options,), _prune_checkpoint_arguments, run_prune_checkpoint, _PRUNE_CHECKPOINT_DESCRIPTION,
    ),  # fmt: skip
)
"""The subcommands, in the order ``--help`` lists them."""

_EXAMPLES = """examples:
  fprune inspect mymodels.py:resnet --input-shape 1,3,224,224
  fprune prune mymodels.py:resnet --input-shape 1,3,224,224 --level 0.3 --out pruned.safetensors --plan plan.json
  fprune apply-plan mymodels.py:resnet --plan plan.json --weights finetuned.safetensors --out pruned.safetensors
  fprune prune-checkpoint --plan plan.json checkpoint/ pruned-checkpoint/"""


def build_parser() -> argparse.ArgumentParser:
    """The ``fprune`` parser: one subparser per :data:`COMMANDS` entry."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Structured pruning from the command line. The model comes from MODULE:FACTORY, a function "
        "that returns it; a plan (prune --plan) replays a pruning on other weights (apply-plan) or on a checkpoint "
        "(prune-checkpoint). Exit codes: 0 ok, 1 a failure (one line on stderr says what to do), 2 a usage error.",
        epilog=_EXAMPLES,
        formatter_class=_Formatter,
    )
    commands = parser.add_subparsers(title="commands", metavar="COMMAND", required=True)
    for command in COMMANDS:
        sub = commands.add_parser(
            command.name, help=command.summary, description=command.description or command.summary,
            parents=[p() for p in command.parents],
        )  # fmt: skip
        command.arguments(sub)
        sub.set_defaults(command=command, parser=sub)
    return parser


class _Formatter(argparse.HelpFormatter):
    """Help with the description reflowed and the epilog (the examples) as written."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        if text.startswith("examples:"):
            return "".join(indent + line for line in text.splitlines(keepends=True))
        return super()._fill_text(text, width, indent)


def _fail(message: str, show_traceback: bool) -> int:
    if show_traceback:
        traceback.print_exc()
    print(f"{PROG}: error: {' '.join(message.split())}", file=sys.stderr)
    return 1


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line on `argv` (default ``sys.argv[1:]``) and return its exit code: 0
    done, 1 a failure (a :class:`fprune.PruneError`, a model that cannot be built: one line on
    stderr, the traceback with ``--traceback``), 2 a usage error. Never raises SystemExit."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        command: Command = args.command
        try:
            command.run(args, args.parser)
        except (Failure, PruneError) as error:
            return _fail(str(error), bool(args.traceback))
        except Exception as error:  # noqa: BLE001 - a one-line report, the traceback on demand
            return _fail(
                f"unexpected {_first_line(error)}; run again with --traceback to see where (and report it if fprune is at fault)",
                bool(args.traceback),
            )
    except SystemExit as exit_:  # argparse: --help (0) or a usage error (2)
        return exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 2)
    return 0
