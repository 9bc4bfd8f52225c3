"""Node output shapes for the analysis: those tracing recorded, else one shape-only run of
the example inputs, made only when a rule asks for a shape it does not know."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, fx, nn

from .._errors import PruneError
from .._util.running import hooks_off, run_on_copies
from .._util.shape_mode import ShapeOnly


class _ShapeRecorder(fx.Interpreter):
    """Runs the graph and records each node's output shape, without touching node.meta."""

    def __init__(self, gm: fx.GraphModule) -> None:
        super().__init__(gm)
        self.shapes: dict[str, tuple[int, ...]] = {}

    def run_node(self, n: fx.Node) -> object:
        result = super().run_node(n)
        if isinstance(result, Tensor):
            self.shapes[n.name] = tuple(result.shape)
        return result


class ForwardFailed(PruneError):
    """The example inputs could not run through the model (raised, never a blocker)."""


class _Recording(nn.Module):
    """`gm` as a submodule, run through a _ShapeRecorder (for functional_call)."""

    def __init__(self, gm: fx.GraphModule) -> None:
        super().__init__()
        self.gm = gm
        self.shapes: dict[str, tuple[int, ...]] = {}

    def forward(self, *args: object) -> object:
        recorder = _ShapeRecorder(self.gm)
        result = recorder.run(*args)
        self.shapes = recorder.shapes
        return result


def record_shapes(gm: fx.GraphModule, example_inputs: Sequence[object]) -> dict[str, tuple[int, ...]]:
    """Every node's output shape for one forward of `example_inputs`.

    The forward runs on shapes alone (``ShapeOnly``: meta tensors, no arithmetic, the model's
    tensors untouched: a ViT-B/16 in a few ms); ops that cannot run on meta (data-dependent
    shapes, ``.item()``) make it run again on the real tensors. The modules' own hooks do not
    fire: this is not a forward of the user's.
    """
    recording = _Recording(gm)
    with torch.no_grad(), hooks_off(gm):
        try:
            with ShapeOnly():
                recording(*example_inputs)
            return recording.shapes
        except Exception:  # noqa: BLE001 - not runnable on meta: run it for real below
            pass
        try:
            run_on_copies(recording, example_inputs)  # train-mode BatchNorm statistics are not updated
        except Exception as error:  # noqa: BLE001 - reported as a PruneError
            first_line = str(error).strip().splitlines()[0] if str(error).strip() else ""
            raise ForwardFailed(
                f"running example_inputs through the model failed ({type(error).__name__}: "
                f"{first_line}); pass the arguments forward takes, as a tuple"
            ) from None
    return recording.shapes


class Shapes:
    """Node output shapes, by node name: those tracing recorded, else from one forward of the
    example inputs, run on the first request for a shape it does not know (many graphs, e.g.
    plain CNNs, never need it)."""

    def __init__(self, gm: fx.GraphModule, example_inputs: Sequence[object] | None) -> None:
        self._gm = gm
        self._inputs = example_inputs
        self._known: dict[str, tuple[int, ...]] = {}
        for node in gm.graph.nodes:
            shape = getattr(node.meta.get("tensor_meta"), "shape", None)
            if shape is not None:
                self._known[node.name] = tuple(int(s) for s in shape)

    def get(self, name: str, *, run: bool = True) -> tuple[int, ...] | None:
        shape = self._known.get(name)
        if shape is None and run and self._inputs is not None:
            inputs, self._inputs = self._inputs, None
            self._known.update(record_shapes(self._gm, inputs))
            shape = self._known.get(name)
        return shape
