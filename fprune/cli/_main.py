"""``fprune inspect`` and ``fprune prune``: argparse subcommands over :func:`fprune.channel_groups`
and :func:`fprune.prune_channels`, for a model that ``MODULE:FACTORY`` builds.

Each command is a :class:`Command` record in ``COMMANDS`` (its arguments and its run); the
options every command shares (the model, its example inputs, ``--json``, ``--traceback``) are
parent parsers, so commands to come (plans) add a record and reuse them. A command computes a
report (a JSON-ready TypedDict) and prints it as rich tables, or as one JSON object with
``--json``."""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import inspect
import json
import os
import re
import sys
import traceback
from collections.abc import Callable, Iterator, Sequence
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
from .._prune_channels import prune_channels
from ..groups._export import export_model
from ..groups._find import channel_groups
from ..groups._noop import explain, why_nothing_prunable
from ..groups._records import ChannelGroup, GraphKind
from ..hf._config import is_hf_model

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
    pruned layers and the file it wrote."""

    model: str
    level: float
    criterion: str
    round_to: int
    ignore: list[str] | None
    inputs: list[InputReport]
    parameters: Counts
    flops: Counts | None
    layers: list[LayerReport]
    out: str


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


def _import_file(path: Path) -> ModuleType:
    if not path.is_file():
        raise Failure(f"no file {str(path)!r}: pass MODULE as a .py file that exists, or as a dotted module path")
    name = "_fprune_cli_" + re.sub(r"\W", "_", path.stem)  # never shadows a real module
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


def _print_json(report: InspectReport | PruneReport) -> None:
    sys.stdout.write(json.dumps(report, indent=2) + "\n")


def _human(count: int) -> str:
    for size, suffix in ((10**12, "T"), (10**9, "G"), (10**6, "M"), (10**3, "k")):
        if count >= size:
            return f"{count / size:.3g}{suffix}"
    return str(count)


def _count(count: int) -> str:
    return f"{count:,}" + (f" ({_human(count)})" if count >= 1000 else "")


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


def save_weights(pruned: nn.Module, out: Path, metadata: dict[str, str]) -> None:
    """The pruned copy's state_dict as safetensors at `out` (contiguous; tied tensors once)."""
    if not out.parent.is_dir():
        raise Failure(f"cannot write {str(out)!r}: the folder {str(out.parent)!r} does not exist")
    try:
        save_model(pruned, str(out), metadata=metadata)
    except OSError as error:
        raise Failure(f"cannot write {str(out)!r} ({_first_line(error)})") from error


def run_prune(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    """``fprune prune``: prune the model with :func:`fprune.prune_channels`, write the pruned
    copy's weights, print what changed."""
    source: Source = args.model
    inputs = _inputs_of(args, parser)
    level: float = args.level
    out = Path(args.out)
    with _status(f"building {source}"):
        model = build_model(source)
        if args.weights is not None:
            load_weights(model, Path(args.weights))
    export = _needs_export(model, bool(args.hf))
    tensors = make_inputs(model, inputs)
    if export and not tensors:
        raise _export_needs_inputs(source)
    kwargs = forward_kwargs(model)
    flops_before = None
    if tensors:
        with _status("counting FLOPs"):
            flops_before = count_flops(model, tensors, kwargs)
    ignore: list[str] | None = None if args.ignore is None else list(args.ignore)
    with _status(f"pruning {source} at level {level}"):
        pruned = prune_channels(
            model, level, example_inputs=tensors or None, graph="export" if export else "auto", ignore=ignore,
            round_to=args.round_to, criterion=CRITERIA[args.criterion],
        )  # fmt: skip
    flops = None
    if flops_before is not None:
        with _status("counting FLOPs of the pruned copy"):
            flops = Counts(before=flops_before, after=count_flops(pruned, tensors, kwargs))
    with _status(f"writing {out}"):
        save_weights(pruned, out, {"format": "pt", "fprune.model": str(source), "fprune.level": repr(level)})
    report = PruneReport(
        model=str(source),
        level=level,
        criterion=args.criterion,
        round_to=args.round_to,
        ignore=ignore,
        inputs=inputs.report(tensors),
        parameters=Counts(before=_parameters(model), after=_parameters(pruned)),
        flops=flops,
        layers=changed_layers(model, pruned),
        out=str(out),
    )
    if args.json:
        _print_json(report)
    else:
        render_prune(report, _console())


def render_prune(report: PruneReport, console: Console) -> None:
    """`report` as a before / after table, the pruned layers, and the file written."""
    table = Table(title=f"{report['model']} pruned at level {report['level']}", title_justify="left")
    table.add_column("")
    table.add_column("before", justify="right")
    table.add_column("after", justify="right")
    table.add_column("kept", justify="right")
    rows = [("parameters", report["parameters"])] + ([("FLOPs", report["flops"])] if report["flops"] is not None else [])
    for name, counts in rows:
        kept = f"{counts['after'] / counts['before']:.1%}" if counts["before"] else "-"
        table.add_row(name, _count(counts["before"]), _count(counts["after"]), kept)
    console.print(table)
    if report["flops"] is not None:
        console.print(f"FLOPs of one forward on {_inputs_line(report['inputs'])}")
    layers = Table(title="pruned layers", title_justify="left")
    for column in ("layer", "type", "before", "after"):
        layers.add_column(column, overflow="fold")
    for layer in report["layers"]:
        tensor = "" if layer["tensor"] == "weight" else f" ({layer['tensor']})"
        layers.add_row(
            Text(layer["name"] + tensor), layer["type"], "x".join(map(str, layer["before"])), "x".join(map(str, layer["after"]))
        )
    console.print(layers)
    console.print(Text(f"wrote {report['out']}"))


# --------------------------------------------------------------------------- the parser


class Command(NamedTuple):
    """A subcommand: its name, one-line help, the arguments it adds (besides the shared parent
    parsers it names) and what it runs."""

    name: str
    summary: str
    parents: tuple[Callable[[], argparse.ArgumentParser], ...]
    arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace, argparse.ArgumentParser], None]


def _model_options() -> argparse.ArgumentParser:
    """MODULE:FACTORY and the example inputs: what every command that builds the model takes."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument(
        "model", type=parse_source, metavar="MODULE:FACTORY",
        help="a dotted module path (importable from the current directory) or a .py file, and the function in it "
        "that returns the model (called without arguments; the model is put in eval mode)",
    )  # fmt: skip
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
    parser.add_argument("--out", required=True, metavar="FILE", help="where to write the pruned copy's state_dict (.safetensors)")
    parser.add_argument("--weights", metavar="FILE", help="a .safetensors state_dict to load into the model first (strict)")
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


COMMANDS: tuple[Command, ...] = (
    Command("inspect", "show a model's channel groups, parameters and FLOPs", (_model_options, _output_options), _inspect_arguments, run_inspect),
    Command(
        "prune", "prune a model with fprune.prune_channels and write the pruned copy's weights (safetensors)",
        (_model_options, _output_options), _prune_arguments, run_prune,
    ),  # fmt: skip
)
"""The subcommands, in the order ``--help`` lists them."""


def build_parser() -> argparse.ArgumentParser:
    """The ``fprune`` parser: one subparser per :data:`COMMANDS` entry."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Structured pruning from the command line. The model comes from MODULE:FACTORY, a function "
        "that returns it. Exit codes: 0 ok, 1 a failure (one line on stderr says what to do), 2 a usage error.",
    )
    commands = parser.add_subparsers(title="commands", metavar="COMMAND", required=True)
    for command in COMMANDS:
        sub = commands.add_parser(
            command.name, help=command.summary, description=command.summary, parents=[p() for p in command.parents]
        )
        command.arguments(sub)
        sub.set_defaults(command=command, parser=sub)
    return parser


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
