"""``apply_plan``: a plan replayed on a model: its tensors through the plan's ops, its modules'
attributes, classes, config and graph set as the plan says."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal, TypeVar

import torch
from torch import Tensor, fx, nn

from .._errors import PruneError
from .._util.checks import check_model, named_tensors, names_by_tensor
from .._util.copy import copy_module
from .._util.tensor_ops import Lookup, TensorOp, Zeros, output_shape, run_ops
from ..groups._mha import HeadPrunedMultiheadAttention
from ._records import EllipsisValue, NodeRef, Plan, SliceValue, Value

ModelT = TypeVar("ModelT", bound=nn.Module)

CLASSES: dict[str, type[nn.Module]] = {"fprune.groups.HeadPrunedMultiheadAttention": HeadPrunedMultiheadAttention}
"""The classes a plan may give a module (a plan never names code to import)."""


def architecture_of(model: nn.Module) -> str:
    """``module.QualifiedName`` of the model's class (a GraphModule's: ``torch.fx.GraphModule``)."""
    if isinstance(model, fx.GraphModule):
        return "torch.fx.GraphModule"
    cls = type(model)
    return f"{cls.__module__}.{cls.__qualname__}"


def tensor_shapes(model: nn.Module) -> dict[str, tuple[int, ...]]:
    """Every parameter and buffer (tied names too), by FQN, with its shape."""
    return {fqn: tuple(t.shape) for fqn, t in named_tensors(model).items()}


def check_fits(model: nn.Module, plan: Plan, caller: str) -> None:
    """PruneError naming the first difference between `model` and the model `plan` was made
    for: the class, a tensor the plan has and the model lacks (or the other way), a shape."""
    if not isinstance(plan, Plan):
        raise PruneError(f"{caller}: expects a fprune.Plan (from make_plan or Plan.from_json), got {type(plan).__name__}")
    architecture = architecture_of(model)
    if architecture != plan.architecture:
        raise PruneError(f"{caller}: the plan was made for a {plan.architecture}, not a {architecture}; make a plan for this model")
    shapes = tensor_shapes(model)
    for fqn, shape in plan.shapes.items():
        if fqn not in shapes:
            raise PruneError(
                f"{caller}: the plan's model has a tensor `{fqn}` {list(shape)} that this model lacks; it is another "
                "architecture (other config or layers): make a plan for this model"
            )
        if shapes[fqn] != shape:
            raise PruneError(
                f"{caller}: `{fqn}` has shape {list(shapes[fqn])} here, {list(shape)} in the plan's model; it is another "
                "configuration of the architecture (or is already pruned): make a plan for this model"
            )
    extra = next((fqn for fqn in shapes if fqn not in plan.shapes), None)
    if extra is not None:
        raise PruneError(
            f"{caller}: this model has a tensor `{extra}` that the plan's model lacks; it is another architecture: "
            "make a plan for this model"
        )


def _module(model: nn.Module, fqn: str, caller: str) -> nn.Module:
    try:
        return model.get_submodule(fqn) if fqn else model
    except AttributeError:
        raise PruneError(f"{caller}: the plan names a module `{fqn}` this model lacks; make a plan for this model") from None


def _decoded(value: Value, nodes: Mapping[str, fx.Node], caller: str) -> object:
    if isinstance(value, NodeRef):
        node = nodes.get(value.name)
        if node is None:
            raise PruneError(f"{caller}: the plan names a graph node `{value.name}` this GraphModule lacks; make a plan for it")
        return node
    if isinstance(value, SliceValue):  # a NamedTuple: before the tuples
        return slice(*(_decoded(part, nodes, caller) for part in value))
    if isinstance(value, EllipsisValue):
        return Ellipsis
    if isinstance(value, tuple):
        return tuple(_decoded(v, nodes, caller) for v in value)
    if isinstance(value, list):
        return [_decoded(v, nodes, caller) for v in value]
    if isinstance(value, dict):
        return {k: _decoded(v, nodes, caller) for k, v in value.items()}
    return value


def _set_config(config: object, path: str, value: Value, caller: str) -> None:
    *parents, name = path.split(".")
    target = config
    for part in parents:
        target = getattr(target, part, None)
        if target is None:
            raise PruneError(f"{caller}: the plan sets config field `{path}`, but this model's config has no `{part}`")
    setattr(target, name, _fresh(value))


def _fresh(value: Value) -> Value:
    """`value` with its lists and dicts copied: the model a plan makes shares no mutable value
    with the plan (nor with another model made from it)."""
    if isinstance(value, list):
        return [_fresh(v) for v in value]
    if isinstance(value, dict):
        return {k: _fresh(v) for k, v in value.items()}
    if isinstance(value, tuple) and type(value) is tuple:
        return tuple(_fresh(v) for v in value)
    return value


def replay(model: ModelT, plan: Plan, caller: str, *, values: Literal["all", "real", "none"] = "all") -> ModelT:
    """The pruned copy `plan` describes, made from `model` (already checked to fit). With
    `values` ``"none"``, its structure only: every tensor on the meta device, in its new
    shape; ``"real"``: so are the model's meta tensors (no op runs on them), while its real
    ones (buffers a checkpoint does not hold) are computed."""
    tensors = named_tensors(model)
    if values != "all":
        return _skeleton(model, plan, tensors, caller, real=values == "real")
    names = names_by_tensor(tensors.items())
    memo: dict[int, object] = {}
    done: dict[int, tuple[str, tuple[TensorOp, ...]]] = {}
    created: dict[str, Tensor] = {}
    for fqn, ops in plan.tensors.items():
        old = tensors.get(fqn)
        if old is None:
            if not ops or not isinstance(ops[0], Zeros):
                raise PruneError(f"{caller}: the plan changes a tensor `{fqn}` this model lacks; make a plan for this model")
            created[fqn] = run_checked(fqn, None, ops, tensors, caller)
            continue
        first = done.setdefault(id(old), (fqn, ops))
        if first[0] != fqn:
            if first[1] != ops:
                raise PruneError(f"{caller}: `{fqn}` and `{first[0]}` are one tensor (tied), but the plan changes them differently")
            continue
        if not ops:
            continue  # nothing done to it: copied with the model (run_ops would return a view of the model's tensor)
        value = run_checked(fqn, old, ops, tensors, caller)
        memo[id(old)] = nn.Parameter(value, requires_grad=old.requires_grad) if isinstance(old, nn.Parameter) else value
    for fqn, old in tensors.items():  # every name of a tied tensor must be in the plan
        if id(old) in done and done[id(old)][0] != fqn and fqn not in plan.tensors and len(names[id(old)]) > 1:
            raise PruneError(f"{caller}: the plan changes `{done[id(old)][0]}` but not `{fqn}`, the same tensor (tied)")
    pruned = copy_module(model, memo)
    for module_fqn, attributes in plan.attributes.items():
        module = _module(pruned, module_fqn, caller)
        for name, setting in attributes.items():
            setattr(module, name, _fresh(setting))
    for module_fqn, class_name in plan.classes.items():
        cls = CLASSES.get(class_name)
        if cls is None:
            raise PruneError(f"{caller}: the plan gives `{module_fqn}` the class {class_name}, which fprune does not make")
        _module(pruned, module_fqn, caller).__class__ = cls
    for fqn, value in created.items():
        owner, _, name = fqn.rpartition(".")
        module = _module(pruned, owner, caller)
        weight = getattr(module, "weight", None)
        requires_grad = weight.requires_grad if isinstance(weight, Tensor) else False
        setattr(module, name, nn.Parameter(value, requires_grad=requires_grad))
    changed = {fqn.rpartition(".")[0] for fqn in plan.tensors}
    for fqn, module in pruned.named_modules():
        if isinstance(module, nn.RNNBase) and fqn in changed:
            module._init_flat_weights()
    if plan.config:
        config = getattr(pruned, "config", None)
        if config is None:
            raise PruneError(f"{caller}: the plan sets config fields, but this model has no `config`")
        for path, setting in plan.config.items():
            _set_config(config, path, setting, caller)
    if plan.graph:
        if not isinstance(pruned, fx.GraphModule):
            raise PruneError(f"{caller}: the plan changes graph nodes, but this model is no GraphModule")
        nodes = {n.name: n for n in pruned.graph.nodes}
        for name, new in plan.graph.items():
            node = nodes.get(name)
            if node is None:
                raise PruneError(f"{caller}: the plan changes a graph node `{name}` this GraphModule lacks; make a plan for it")
            args = _decoded(new.args, nodes, caller)
            kwargs = _decoded(dict(new.kwargs), nodes, caller)
            assert isinstance(args, tuple) and isinstance(kwargs, dict)
            node.args, node.kwargs = args, kwargs
        pruned.recompile()
    return pruned


def _skeleton(model: ModelT, plan: Plan, tensors: Mapping[str, Tensor], caller: str, *, real: bool) -> ModelT:
    """:func:`replay` without values: each tensor an empty meta tensor of its new shape (but,
    where `real`, the model's real tensors, computed)."""
    memo: dict[int, object] = {}
    for fqn, old in tensors.items():
        if id(old) in memo:
            continue
        ops = plan.tensors.get(fqn, ())
        if real and old.device.type != "meta":
            value = run_checked(fqn, old, ops, tensors, caller) if ops else old.detach().clone()
        else:
            value = torch.empty(output_shape(tuple(old.shape), ops), dtype=old.dtype, device="meta")
        memo[id(old)] = nn.Parameter(value, requires_grad=old.requires_grad) if isinstance(old, nn.Parameter) else value
    bare = copy_module(model, memo)
    created = {
        fqn: ops for fqn, ops in plan.tensors.items() if fqn not in tensors and ops and isinstance(ops[0], Zeros)
    }  # fmt: skip
    structure = Plan(
        architecture=plan.architecture, shapes=plan.shapes, tensors={}, attributes=plan.attributes, classes=plan.classes,
        config=plan.config, graph=plan.graph, fprune_version=plan.fprune_version,
    )  # fmt: skip
    pruned = replay(bare, structure, caller)
    for fqn, ops in created.items():
        first = ops[0]
        assert isinstance(first, Zeros)
        like = _lookup(tensors, caller)(first.like)
        owner, _, name = fqn.rpartition(".")
        module = _module(pruned, owner, caller)
        weight = getattr(module, "weight", None)
        empty = torch.empty(output_shape((), ops), dtype=like.dtype, device="meta")
        setattr(module, name, nn.Parameter(empty, requires_grad=weight.requires_grad if isinstance(weight, Tensor) else False))
    return pruned


def run_checked(fqn: str, x: Tensor | None, ops: tuple[TensorOp, ...], tensors: Mapping[str, Tensor], caller: str) -> Tensor:
    """`run_ops`, with what torch refuses (an index past the end, sizes that do not line up: a
    plan edited by hand) as a PruneError naming the tensor."""
    try:
        return run_ops(x, ops, _lookup(tensors, caller))
    except PruneError:
        raise
    except (IndexError, RuntimeError, ValueError) as error:
        text = str(error).strip().splitlines()
        raise PruneError(
            f"{caller}: the plan's ops on `{fqn}` do not apply to this model's tensors ({type(error).__name__}: "
            f"{text[0] if text else ''}); make a plan for this model"
        ) from None


def _lookup(tensors: Mapping[str, Tensor], caller: str) -> Lookup:
    def tensor(fqn: str) -> Tensor:
        found = tensors.get(fqn)
        if found is None:
            raise PruneError(f"{caller}: the plan reads a tensor `{fqn}` this model lacks; make a plan for this model")
        return found

    return tensor


def apply_plan(model: ModelT, plan: Plan) -> ModelT:
    """The pruned copy that `plan` describes, made from `model` (left unchanged).

    ``apply_plan(model, make_plan(model, masks, groups))`` is ``apply_prune(model, masks,
    groups)``, bit for bit. `model` may be another instance of the architecture the plan was
    made on (the same class, tensor names and shapes: the same config), with other weights (a
    fine-tuned one, another dtype, or on the meta device to rebuild the pruned architecture).

    Raises:
        PruneError: the model does not fit the plan; the message names the first difference
            (the class, a tensor one of them lacks, a shape).
    """
    check_model(model, "apply_plan")
    check_fits(model, plan, "apply_plan")
    return replay(model, plan, "apply_plan")
