"""The plan: what a pruning does, as a typed frozen record independent of the weights, and its
JSON form (human-readable, diffable, with a schema version)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import NamedTuple, Union

from .._errors import PruneError
from .._util.tensor_ops import Compensate, Fold, Full, MeanTerm, Scale, Take, TensorOp, Zeros, output_shape

SCHEMA = 1
"""The version of the JSON form :meth:`Plan.to_json` writes; :meth:`Plan.from_json` reads it."""


class NodeRef(NamedTuple):
    """A graph node named in a node's arguments (a GraphModule's ``view(x, (b, n, 8, 64))``)."""

    name: str


class SliceValue(NamedTuple):
    """A ``slice`` in a graph node's arguments (``x[:, :k]``)."""

    start: Value
    stop: Value
    step: Value


class EllipsisValue(NamedTuple):
    """``...`` in a graph node's arguments (``x[..., :k]``)."""


Value = Union[
    None, bool, int, float, str, NodeRef, SliceValue, EllipsisValue, tuple["Value", ...], list["Value"], dict[str, "Value"]
]
"""What a plan can set: a module attribute, a config field, a graph node's argument."""


@dataclass(frozen=True)
class NodeArgs:
    """A GraphModule node's new arguments (the sizes pruning writes into its graph)."""

    args: tuple[Value, ...]
    kwargs: Mapping[str, Value]


@dataclass(frozen=True)
class Plan:
    """What pruning does to a model, independent of its weights: :func:`fprune.make_plan`
    records it, :func:`fprune.apply_plan` replays it on the model (or on any model of the same
    architecture: the same class, tensor names and shapes), :func:`fprune.load_pruned`
    rebuilds the pruned architecture to load pruned weights into, and
    :func:`fprune.prune_checkpoint` streams a checkpoint through it.

    Attributes:
        architecture: the model's class (``module.QualifiedName``).
        shapes: every parameter and buffer of the original model, by FQN, with its shape.
        tensors: what pruning does to each tensor that changes, in order, by FQN (kept indices
            per dim; a bias fold, bias compensation or norm rescaling); tensors the pruned
            copy adds (a bias) start with :class:`~fprune.plan.Zeros`.
        attributes: the new value of each module attribute that changes, by module FQN
            (``in_features``, ``num_heads``, an RMSNorm's ``eps``).
        classes: the new class of a module that changes class, by FQN
            (``nn.MultiheadAttention`` -> ``fprune.groups.HeadPrunedMultiheadAttention``).
        config: the Hugging Face config fields that change, by dotted path
            (``"intermediate_size"``, ``"text_config.intermediate_size"``).
        graph: a GraphModule's nodes whose arguments change, by node name.
        fprune_version: the fprune that made the plan.
        schema: the version of the plan's JSON form.
    """

    architecture: str
    shapes: Mapping[str, tuple[int, ...]]
    tensors: Mapping[str, tuple[TensorOp, ...]]
    attributes: Mapping[str, Mapping[str, Value]] = field(default_factory=dict)
    classes: Mapping[str, str] = field(default_factory=dict)
    config: Mapping[str, Value] = field(default_factory=dict)
    graph: Mapping[str, NodeArgs] = field(default_factory=dict)
    fprune_version: str = ""
    schema: int = SCHEMA

    def __hash__(self) -> int:
        """Equal plans have equal fingerprints (its mappings are not hashable themselves)."""
        return hash(self.fingerprint)

    @property
    def fingerprint(self) -> str:
        """A digest of the original architecture: its class and every tensor's name and shape."""
        return fingerprint(self.architecture, self.shapes)

    def new_shapes(self) -> dict[str, tuple[int, ...]]:
        """Every tensor of the pruned model, by FQN, with its shape."""
        shapes = {fqn: output_shape(shape, self.tensors.get(fqn, ())) for fqn, shape in self.shapes.items()}
        for fqn, ops in self.tensors.items():
            if fqn not in shapes:
                shapes[fqn] = output_shape((), ops)
        return shapes

    def to_json(self) -> str:
        """The plan as JSON text: one line per tensor, module, config field and graph node (a
        diff shows what changed), kept and removed indices as ranges (``"0-3,7,9-12"``),
        floats exactly (``repr``)."""
        sections: dict[str, dict[str, object]] = {
            "shapes": {fqn: list(shape) for fqn, shape in self.shapes.items()},
            "tensors": {fqn: [_op_json(op) for op in ops] for fqn, ops in self.tensors.items()},
            "attributes": {m: {k: _value_json(v) for k, v in a.items()} for m, a in self.attributes.items()},
            "classes": dict(self.classes),
            "config": {k: _value_json(v) for k, v in self.config.items()},
            "graph": {
                n: {"args": [_value_json(v) for v in a.args], "kwargs": {k: _value_json(v) for k, v in a.kwargs.items()}}
                for n, a in self.graph.items()
            },
        }
        head = {"schema": self.schema, "fprune_version": self.fprune_version, "architecture": self.architecture, "fingerprint": self.fingerprint}
        lines = ["{"]
        lines += [f" {json.dumps(k)}: {json.dumps(v)}," for k, v in head.items()]
        for index, (name, entries) in enumerate(sections.items()):
            items = [f"  {json.dumps(k)}: {json.dumps(v, separators=(', ', ': '))}" for k, v in entries.items()]
            end = "," if index < len(sections) - 1 else ""
            lines.append(f" {json.dumps(name)}: {{" + ("\n" + ",\n".join(items) + "\n }" if items else "}") + end)
        lines.append("}")
        return "\n".join(lines) + "\n"

    @classmethod
    def from_json(cls, text: str | bytes) -> Plan:
        """The plan :meth:`to_json` wrote. PruneError for text that is no plan, a schema
        this fprune does not read, or a fingerprint that does not match its shapes (an edited
        architecture)."""
        try:
            document = json.loads(text)
        except ValueError as error:
            raise PruneError(f"Plan.from_json: the text is not JSON ({error}); pass what Plan.to_json wrote") from None
        if not isinstance(document, dict) or "schema" not in document or "tensors" not in document:
            raise PruneError("Plan.from_json: the JSON is not a plan (no `schema` / `tensors`); pass what Plan.to_json wrote")
        schema = document["schema"]
        if type(schema) is not int or schema != SCHEMA:
            raise PruneError(
                f"Plan.from_json: the plan has schema version {schema!r}, this fprune reads version {SCHEMA}; "
                "make the plan again with this fprune, or use the fprune that wrote it"
            )
        try:
            plan = cls(
                architecture=str(document["architecture"]),
                shapes={fqn: tuple(_int(s) for s in shape) for fqn, shape in document["shapes"].items()},
                tensors={fqn: tuple(_op_from(op) for op in ops) for fqn, ops in document["tensors"].items()},
                attributes={m: {k: _value_from(v) for k, v in a.items()} for m, a in document.get("attributes", {}).items()},
                classes={m: str(c) for m, c in document.get("classes", {}).items()},
                config={k: _value_from(v) for k, v in document.get("config", {}).items()},
                graph={
                    n: NodeArgs(tuple(_value_from(v) for v in a["args"]), {k: _value_from(v) for k, v in a["kwargs"].items()})
                    for n, a in document.get("graph", {}).items()
                },
                fprune_version=str(document.get("fprune_version", "")),
                schema=SCHEMA,
            )
        except (KeyError, TypeError, ValueError, AttributeError) as error:
            raise PruneError(f"Plan.from_json: the plan is malformed ({type(error).__name__}: {error}); pass what Plan.to_json wrote") from None
        stated = document.get("fingerprint")
        if stated is not None and stated != plan.fingerprint:
            raise PruneError(
                "Plan.from_json: the plan's fingerprint does not match its architecture and shapes (the file was edited "
                "or damaged); make the plan again"
            )
        return plan


def fingerprint(architecture: str, shapes: Mapping[str, tuple[int, ...]]) -> str:
    """``sha256:`` of the class and every tensor's name and shape, in order."""
    text = json.dumps([architecture, [[fqn, list(shape)] for fqn, shape in shapes.items()]], separators=(",", ":"))
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


# --------------------------------------------------------------------------- JSON of the parts


def ranges(indices: tuple[int, ...]) -> str:
    """``(0, 1, 2, 3, 7, 9, 10)`` -> ``"0-3,7,9-10"`` (indices in the order given)."""
    parts: list[str] = []
    start = previous = None
    for i in indices:
        if previous is not None and i == previous + 1:
            previous = i
            continue
        if start is not None:
            parts.append(f"{start}-{previous}" if previous != start else f"{start}")
        start = previous = i
    if start is not None:
        parts.append(f"{start}-{previous}" if previous != start else f"{start}")
    return ",".join(parts)


def _indices(text: str) -> tuple[int, ...]:
    out: list[int] = []
    for part in text.split(",") if text else ():
        first, _, last = part.partition("-")
        out.extend(range(int(first), int(last) + 1) if last else (int(first),))
    return tuple(out)


def _op_json(op: TensorOp) -> dict[str, object]:
    if isinstance(op, Take):
        return {"op": "take", "kept": {str(dim): ranges(kept) for dim, kept in op.kept}}
    if isinstance(op, Fold):
        return {"op": "fold", "weight": op.weight, "dim": op.dim, "removed": ranges(op.removed), "value": op.value, "rows": op.rows}
    if isinstance(op, Compensate):
        terms = [
            {"weight": t.weight, "dim": t.dim, "removed": ranges(t.removed), "means": list(t.means), "rows": t.rows} for t in op.terms
        ]
        return {"op": "compensate", "terms": terms, "replace": op.replace}
    if isinstance(op, Scale):
        return {"op": "scale", "factor": op.factor, "offset": op.offset}
    if isinstance(op, Full):
        return {"op": "full", "value": op.value}
    return {"op": "zeros", "shape": list(op.shape), "like": op.like}


def _op_from(data: Mapping[str, object]) -> TensorOp:
    kind = data["op"]
    d: dict[str, object] = dict(data)
    if kind == "take":
        kept = d["kept"]
        if not isinstance(kept, dict):
            raise ValueError(f"a take's `kept` must be an object, got {kept!r}")
        return Take(tuple((int(dim), _indices(str(text))) for dim, text in kept.items()))
    if kind == "fold":
        return Fold(str(d["weight"]), _int(d["dim"]), _indices(str(d["removed"])), _float(d["value"]), _int(d["rows"]))
    if kind == "compensate":
        terms = d["terms"]
        if not isinstance(terms, list):
            raise ValueError(f"a compensation's `terms` must be a list, got {terms!r}")
        return Compensate(
            tuple(
                MeanTerm(str(t["weight"]), _int(t["dim"]), _indices(str(t["removed"])), tuple(_float(m) for m in t["means"]), _int(t["rows"]))
                for t in terms
            ),
            bool(d["replace"]),
        )
    if kind == "scale":
        offset = d.get("offset")
        return Scale(_float(d["factor"]), None if offset is None else _float(offset))
    if kind == "full":
        return Full(_float(d["value"]))
    if kind == "zeros":
        shape = d["shape"]
        if not isinstance(shape, list):
            raise ValueError(f"a zeros' `shape` must be a list, got {shape!r}")
        return Zeros(tuple(_int(s) for s in shape), str(d["like"]))
    raise ValueError(f"unknown tensor op {kind!r}")


def _int(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"expected an int, got {value!r}")
    return value


def _float(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"expected a number, got {value!r}")
    return float(value)


def _value_json(value: Value) -> object:
    """JSON of a value: a tuple as ``{"tuple": [...]}``, a node as ``{"node": name}`` (a list
    and a dict of strings stay as they are)."""
    if isinstance(value, NodeRef):
        return {"node": value.name}
    if isinstance(value, SliceValue):
        return {"slice": [_value_json(value.start), _value_json(value.stop), _value_json(value.step)]}
    if isinstance(value, EllipsisValue):
        return {"ellipsis": None}
    if isinstance(value, tuple):
        return {"tuple": [_value_json(v) for v in value]}
    if isinstance(value, list):
        return [_value_json(v) for v in value]
    if isinstance(value, dict):
        return {"dict": {k: _value_json(v) for k, v in value.items()}}
    return value


def _value_from(data: object) -> Value:
    if isinstance(data, dict):
        if set(data) == {"node"}:
            return NodeRef(str(data["node"]))
        if set(data) == {"slice"}:
            start, stop, step = (_value_from(v) for v in data["slice"])
            return SliceValue(start, stop, step)
        if set(data) == {"ellipsis"}:
            return EllipsisValue()
        if set(data) == {"tuple"}:
            return tuple(_value_from(v) for v in data["tuple"])
        if set(data) == {"dict"}:
            return {str(k): _value_from(v) for k, v in data["dict"].items()}
        raise ValueError(f"unknown value {data!r}")
    if isinstance(data, list):
        return [_value_from(v) for v in data]
    if data is None or isinstance(data, (bool, int, float, str)):
        return data
    raise ValueError(f"unknown value {data!r}")


def encodable(value: object) -> bool:
    """Whether a plan can hold `value` (see :data:`Value`)."""
    if value is None or isinstance(value, (bool, int, float, str, NodeRef, EllipsisValue)):
        return True
    if isinstance(value, SliceValue):
        return encodable(value.start) and encodable(value.stop) and encodable(value.step)
    if isinstance(value, (tuple, list)):
        return all(encodable(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and encodable(v) for k, v in value.items())
    return False
