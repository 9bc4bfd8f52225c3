"""The second graph front-end: a ``torch.export`` graph as the torch-level fx graph the flow
rules read.

``torch.export`` captures models fx cannot trace (every Hugging Face ``transformers`` model,
data-dependent Python, iteration over tensors). Its graph is in ATen ops over lifted
parameters. :func:`torch_level_graph` turns it into what :func:`fprune.channel_groups` walks:
each parameter / buffer placeholder a ``get_attr`` of the model's own FQN (the graph
signature says which), each ATen op the torch call the flow rules know (``aten.linear`` ->
``F.linear``, ``aten.view`` -> ``.view``, ``aten.slice`` -> indexing, ...), node names, module
stacks and shapes kept. Ops it does not map stay ATen calls: a rule keyed by the
``OpOverload`` follows them, or they block the channels that reach them, as any unknown op.
"""

from __future__ import annotations

import functools
import operator
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, fx, nn
from torch.export import ExportedProgram
from torch.export.graph_signature import InputKind

from .._errors import PruneError
from .._util.running import ExampleShapes, device_of, quiet_torch_logs
from ._heads import _names
from ._recorded import changes_by_call, compare, recorder_of
from ._sizes import with_sizes

aten = torch.ops.aten

_MAX = 2**63 - 1  # aten.slice's "to the end"


class _Call(NamedTuple):
    """A torch-level call: op ("call_function" / "call_method"), target, args, kwargs."""

    op: str
    target: object
    args: tuple[object, ...]
    kwargs: dict[str, object]


_Translate = Callable[[tuple[object, ...], dict[str, object]], _Call | None]


def _method(name: str) -> _Translate:
    def translate(args: tuple[object, ...], kwargs: dict[str, object]) -> _Call:
        return _Call("call_method", name, args, kwargs)

    return translate


def _function(target: object, drop: Sequence[str] = ()) -> _Translate:
    def translate(args: tuple[object, ...], kwargs: dict[str, object]) -> _Call:
        return _Call("call_function", target, args, {k: v for k, v in kwargs.items() if k not in drop})

    return translate


def _binary(target: object) -> _Translate:
    """``aten.add.Tensor(a, b, alpha=1)`` -> ``a + b`` (an alpha other than 1 stays ATen)."""

    def translate(args: tuple[object, ...], kwargs: dict[str, object]) -> _Call | None:
        if kwargs.get("alpha", 1) != 1 or len(args) != 2:
            return None
        return _Call("call_function", target, args, {})

    return translate


def _slice(args: tuple[object, ...], kwargs: dict[str, object]) -> _Call | None:
    """``aten.slice.Tensor(x, dim, start, end, step)`` -> ``x[:, ..., start:end:step]``."""
    x, dim, start, end, step = (list(args) + [kwargs.get(k) for k in ("dim", "start", "end", "step")][len(args) - 1 :])[:5]
    dim = 0 if dim is None else dim
    if not isinstance(dim, int) or dim < 0:
        return None  # a negative dim would need the rank
    end = None if end == _MAX else end
    index = (slice(None),) * dim + (slice(start, end, None if step in (None, 1) else step),)
    return _Call("call_function", operator.getitem, (x, index), {})


def _select(args: tuple[object, ...], kwargs: dict[str, object]) -> _Call | None:
    """``aten.select.int(x, dim, index)`` -> ``x[:, ..., index]``."""
    x, dim, index = args[0], args[1], args[2]
    if not isinstance(dim, int) or dim < 0:
        return None
    return _Call("call_function", operator.getitem, (x, (slice(None),) * dim + (index,)), {})


def _index(args: tuple[object, ...], kwargs: dict[str, object]) -> _Call | None:
    """``aten.index.Tensor(x, [i, None, j])`` -> ``x[i, :, j]`` (Python's indexing calls that op)."""
    indices = args[1] if len(args) > 1 else kwargs.get("indices")
    if not isinstance(indices, (list, tuple)):
        return None
    index = tuple(slice(None) if i is None else i for i in indices)
    return _Call("call_function", operator.getitem, (args[0], index[0] if len(index) == 1 else index), {})


def _embedding(args: tuple[object, ...], kwargs: dict[str, object]) -> _Call:
    """``aten.embedding(weight, indices, ...)`` -> ``F.embedding(indices, weight)``."""
    return _Call("call_function", F.embedding, (args[1], args[0]), {})


def _convolution(args: tuple[object, ...], kwargs: dict[str, object]) -> _Call | None:
    """``aten.convolution(x, weight, bias, stride, padding, dilation, transposed, output_padding,
    groups)`` -> ``F.conv{1,2,3}d(x, weight, bias, stride, padding, dilation, groups)`` (a transposed
    one stays ATen)."""
    names = ("input", "weight", "bias", "stride", "padding", "dilation", "transposed", "output_padding", "groups")
    values = dict(zip(names, args)) | {k: v for k, v in kwargs.items() if k in names}
    stride = values.get("stride")
    conv = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}.get(len(stride)) if isinstance(stride, (list, tuple)) else None
    if conv is None or values.get("transposed") or len(values) != len(names):
        return None
    return _Call("call_function", conv, tuple(values[k] for k in names if k not in ("transposed", "output_padding")), {})


def _layer_norm(args: tuple[object, ...], kwargs: dict[str, object]) -> _Call:
    """``aten.layer_norm(x, shape, weight, bias, eps, cudnn_enable)`` -> ``F.layer_norm``."""
    return _Call("call_function", F.layer_norm, tuple(args[:5]), {k: v for k, v in kwargs.items() if k != "cudnn_enable"})


def _gelu(args: tuple[object, ...], kwargs: dict[str, object]) -> _Call:
    approximate = kwargs.get("approximate", args[1] if len(args) > 1 else "none")
    return _Call("call_function", F.gelu, (args[0],), {} if approximate == "none" else {"approximate": approximate})


def _softmax(args: tuple[object, ...], kwargs: dict[str, object]) -> _Call:
    """``aten.softmax.int(x, dim, dtype=None)`` / ``aten._softmax(x, dim, half_to_float)``."""
    return _Call("call_function", torch.softmax, (args[0], args[1]), {})


def _dropout(args: tuple[object, ...], kwargs: dict[str, object]) -> _Call:
    """``aten.dropout(x, p, train)`` -> ``F.dropout(x, p, training=train)``."""
    train = kwargs.get("train", args[2] if len(args) > 2 else True)
    return _Call("call_function", F.dropout, (args[0], args[1]), {"training": train})


def _mean(args: tuple[object, ...], kwargs: dict[str, object]) -> _Call:
    """``aten.mean.dim(x, dim, keepdim=False, dtype=None)`` -> ``x.mean(dim, keepdim)``."""
    x, dim = args[0], args[1]
    keepdim = kwargs.get("keepdim", args[2] if len(args) > 2 else False)
    if isinstance(dim, list) and len(dim) == 1:
        dim = dim[0]
    out_kwargs: dict[str, object] = {"dtype": kwargs["dtype"]} if kwargs.get("dtype") is not None else {}
    return _Call("call_method", "mean", (x, dim, keepdim), out_kwargs)


def _sum(args: tuple[object, ...], kwargs: dict[str, object]) -> _Call:
    x, dim = args[0], args[1] if len(args) > 1 else kwargs.get("dim")
    keepdim = kwargs.get("keepdim", args[2] if len(args) > 2 else False)
    return _Call("call_method", "sum", (x, dim, keepdim), {})


def _to(args: tuple[object, ...], kwargs: dict[str, object]) -> _Call:
    """Every ``aten.to`` / ``_to_copy`` overload -> ``x.to(dtype)`` (device moves keep channels)."""
    dtype = kwargs.get("dtype") or next((a for a in args[1:] if isinstance(a, torch.dtype)), None)
    return _Call("call_method", "to", (args[0],) if dtype is None else (args[0], dtype), {})


def _keep(args: tuple[object, ...], kwargs: dict[str, object]) -> _Call:
    return _Call("call_method", "contiguous", (args[0],), {})


def _per_channel_norm(target: object, flag: str) -> _Translate:
    """``aten.batch_norm`` / ``aten.instance_norm(input, weight, bias, running_mean, running_var,
    flag, momentum, eps, cudnn_enabled)`` -> ``target(input, running_mean, running_var, weight,
    bias, flag, momentum, eps)``, the order of ``F.batch_norm`` / ``F.instance_norm``."""
    names = ("input", "weight", "bias", "running_mean", "running_var", flag, "momentum", "eps", "cudnn_enabled")

    def translate(args: tuple[object, ...], kwargs: dict[str, object]) -> _Call | None:
        values = dict(zip(names, args)) | {k: v for k, v in kwargs.items() if k in names}
        if any(k not in values for k in names[:8]) or len(args) + len(kwargs) > len(names):
            return None
        order = ("input", "running_mean", "running_var", "weight", "bias", flag, "momentum", "eps")
        return _Call("call_function", target, tuple(values[k] for k in order), {})

    return translate


def _no_training(args: tuple[object, ...], kwargs: dict[str, object]) -> _Call | None:
    """``aten._native_batch_norm_legit_no_training(input, weight, bias, running_mean,
    running_var, momentum, eps)``, of which only output 0 is read (``_FIRST_OUTPUT``) ->
    ``F.batch_norm(input, running_mean, running_var, weight, bias, False, momentum, eps)``."""
    names = ("input", "weight", "bias", "running_mean", "running_var", "momentum", "eps")
    values = dict(zip(names, args)) | {k: v for k, v in kwargs.items() if k in names}
    if len(values) != len(names) or len(args) + len(kwargs) != len(names):
        return None
    order = ("input", "running_mean", "running_var", "weight", "bias")
    return _Call("call_function", F.batch_norm, (*(values[k] for k in order), False, values["momentum"], values["eps"]), {})


def _rrelu(args: tuple[object, ...], kwargs: dict[str, object]) -> _Call | None:
    """``aten.rrelu(x, lower, upper, training, generator=None)`` -> ``F.rrelu(x, lower, upper,
    training)`` (F.rrelu's fifth argument is `inplace`; a generator stays ATen)."""
    if len(args) > 4 and args[4] is not None or kwargs.get("generator") is not None:
        return None
    return _Call("call_function", F.rrelu, tuple(args[:4]), {k: v for k, v in kwargs.items() if k != "generator"})


def _elu(args: tuple[object, ...], kwargs: dict[str, object]) -> _Call | None:
    """``aten.elu(x, alpha=1, scale=1, input_scale=1)`` -> ``F.elu(x, alpha)`` (other scales stay ATen)."""
    values = dict(zip(("self", "alpha", "scale", "input_scale"), args)) | kwargs
    if values.get("scale", 1) != 1 or values.get("input_scale", 1) != 1:
        return None
    return _Call("call_function", F.elu, (args[0], values.get("alpha", 1.0)), {})


_TRANSLATIONS: dict[object, _Translate] = {
    aten.linear.default: _function(F.linear),
    aten.embedding.default: _embedding,
    aten.addmm.default: _function(torch.addmm),
    aten.conv1d.default: _function(F.conv1d),
    aten.conv1d.padding: _function(F.conv1d),
    aten.conv2d.default: _function(F.conv2d),
    aten.conv2d.padding: _function(F.conv2d),
    aten.conv3d.default: _function(F.conv3d),
    aten.conv3d.padding: _function(F.conv3d),
    aten.convolution.default: _convolution,
    aten.layer_norm.default: _layer_norm,
    aten.rms_norm.default: _function(F.rms_norm),
    aten.repeat_interleave.self_int: _function(torch.repeat_interleave, drop=("output_size",)),
    aten.view.default: _method("view"),
    aten._unsafe_view.default: _method("view"),
    aten.reshape.default: _method("reshape"),
    aten.transpose.int: _method("transpose"),
    aten.permute.default: _method("permute"),
    aten.unsqueeze.default: _method("unsqueeze"),
    aten.expand.default: _method("expand"),
    aten.flatten.using_ints: _method("flatten"),
    aten.slice.Tensor: _slice,
    aten.select.int: _select,
    aten.cat.default: _function(torch.cat),
    aten.split.Tensor: _function(torch.split),
    aten.split_with_sizes.default: _function(torch.split),
    aten.chunk.default: _function(torch.chunk),
    aten.unbind.int: _function(torch.unbind),
    aten.add.Tensor: _binary(operator.add),
    aten.add.Scalar: _binary(operator.add),
    aten.sub.Tensor: _binary(operator.sub),
    aten.sub.Scalar: _binary(operator.sub),
    aten.mul.Tensor: _binary(operator.mul),
    aten.mul.Scalar: _binary(operator.mul),
    aten.div.Tensor: _binary(operator.truediv),
    aten.div.Scalar: _binary(operator.truediv),
    aten.neg.default: _function(operator.neg),
    aten.pow.Tensor_Scalar: _function(torch.pow),
    aten.rsqrt.default: _function(torch.rsqrt),
    aten.sqrt.default: _function(torch.sqrt),
    aten.mean.dim: _mean,
    aten.sum.dim_IntList: _sum,
    aten.to.dtype: _to,
    aten.to.dtype_layout: _to,
    aten.to.device: _to,
    aten._to_copy.default: _to,
    aten.type_as.default: _method("type_as"),
    aten.alias.default: _keep,
    aten.clone.default: _keep,
    aten.contiguous.default: _keep,
    aten.detach.default: _keep,
    aten.lift_fresh_copy.default: _keep,
    aten.relu.default: _function(F.relu),
    aten.silu.default: _function(F.silu),
    aten.gelu.default: _gelu,
    aten.tanh.default: _function(torch.tanh),
    aten.sigmoid.default: _function(torch.sigmoid),
    aten.softmax.int: _softmax,
    aten._softmax.default: _softmax,
    aten.dropout.default: _dropout,
    aten.batch_norm.default: _per_channel_norm(F.batch_norm, "training"),
    aten._native_batch_norm_legit_no_training.default: _no_training,
    aten.instance_norm.default: _per_channel_norm(F.instance_norm, "use_input_stats"),
    aten.relu_.default: _function(F.relu),
    aten.relu6.default: _function(F.relu6),
    aten.hardtanh.default: _function(F.hardtanh),
    aten.hardtanh_.default: _function(F.hardtanh),
    aten.hardswish.default: _function(F.hardswish),
    aten.hardswish_.default: _function(F.hardswish),
    aten.hardsigmoid.default: _function(F.hardsigmoid),
    aten.hardsigmoid_.default: _function(F.hardsigmoid),
    aten.sigmoid_.default: _function(torch.sigmoid),
    aten.tanh_.default: _function(torch.tanh),
    aten.silu_.default: _function(F.silu),
    aten.gelu_.default: _gelu,
    aten.leaky_relu.default: _function(F.leaky_relu),
    aten.leaky_relu_.default: _function(F.leaky_relu),
    aten.elu.default: _elu,
    aten.elu_.default: _elu,
    aten.mish.default: _function(F.mish),
    aten.mish_.default: _function(F.mish),
    aten.softplus.default: _function(F.softplus),
    aten.selu.default: _function(F.selu),
    aten.celu.default: _function(F.celu),
    aten.hardshrink.default: _function(F.hardshrink),
    aten.log_sigmoid.default: _function(F.logsigmoid),
    aten.rrelu.default: _rrelu,
    aten.abs.default: _function(torch.abs),
    aten.max_pool1d.default: _function(F.max_pool1d),
    aten.max_pool2d.default: _function(F.max_pool2d),
    aten.max_pool3d.default: _function(F.max_pool3d),
    aten.avg_pool1d.default: _function(F.avg_pool1d),
    aten.avg_pool2d.default: _function(F.avg_pool2d),
    aten.avg_pool3d.default: _function(F.avg_pool3d),
    aten.adaptive_avg_pool1d.default: _function(F.adaptive_avg_pool1d),
    aten.adaptive_avg_pool2d.default: _function(F.adaptive_avg_pool2d),
    aten.adaptive_avg_pool3d.default: _function(F.adaptive_avg_pool3d),
    aten.add_.Tensor: _binary(operator.add),
    aten.mul_.Tensor: _binary(operator.mul),
    aten.roll.default: _function(torch.roll),
    aten.channel_shuffle.default: _function(torch.channel_shuffle),
    aten.native_channel_shuffle.default: _function(torch.channel_shuffle),
    aten.index.Tensor: _index,
    aten.matmul.default: _function(torch.matmul),
    aten.scaled_dot_product_attention.default: _function(F.scaled_dot_product_attention),
}
"""ATen op -> its torch-level call (None from a translation: the node stays an ATen call)."""

_DROPPED = (aten._assert_tensor_metadata.default, aten._assert_scalar.default, aten.sym_constrain_range_for_size.default)
"""Checks with no output that export records; not part of the computation."""

_FIRST_OUTPUT = (aten._native_batch_norm_legit_no_training.default,)
"""Ops that return a tuple, translated to a call that returns its output 0: only where every
user is ``getitem(·, 0)``, which then reads the translated call itself."""


class _Shape(NamedTuple):
    """``node.meta["tensor_meta"]`` as the analysis reads it: just a shape."""

    shape: tuple[int, ...]


def torch_level_graph(ep: ExportedProgram, caller: str = "channel_groups") -> fx.GraphModule:
    """`ep`'s graph over the model's own tensors by FQN, in the torch-level ops flow rules follow.

    The GraphModule shares the exported program's tensors (nothing is copied); it is for the
    analysis: its nodes keep their names, ``nn_module_stack`` and output shapes.
    """
    signature = ep.graph_signature
    tensors: dict[str, Tensor] = dict(ep.state_dict)
    tensors.update({k: v for k, v in ep.constants.items() if isinstance(v, Tensor)})
    lifted: dict[str, str] = {}  # placeholder name -> FQN
    for spec in signature.input_specs:
        if spec.kind in (InputKind.PARAMETER, InputKind.BUFFER, InputKind.CONSTANT_TENSOR) and spec.target is not None:
            lifted[spec.arg.name] = spec.target
        elif spec.kind not in (InputKind.USER_INPUT,):
            raise PruneError(f"{caller}: the exported program has an input of kind {spec.kind.name} (`{spec.arg.name}`), which fprune does not follow")
    aliases: dict[int, list[str]] = {}  # tied tensors: every FQN of each
    for fqn, tensor in tensors.items():
        aliases.setdefault(id(tensor), []).append(fqn)
    holder = nn.Module()
    for fqn in sorted({name for target in lifted.values() for name in aliases[id(tensors[target])]}):
        _register(holder, fqn, tensors[fqn], isinstance(tensors[fqn], nn.Parameter))
    graph = fx.Graph()
    env: dict[str, fx.Node] = {}
    alias_nodes: dict[str, fx.Node] = {}

    def load(value: fx.node.Argument, module: str = "") -> fx.node.Argument:
        return fx.node.map_arg(value, lambda n: _alias(n.name, module) or env[n.name])

    def _alias(name: str, module: str) -> fx.Node | None:
        """A tied tensor under the name its user's module owns (``lm_head.weight`` in
        ``lm_head``, ``model.embed_tokens.weight`` in the embedding)."""
        target = lifted.get(name)
        names = aliases[id(tensors[target])] if target is not None else []
        if len(names) < 2 or not module:
            return None
        owned = [fqn for fqn in names if fqn.rpartition(".")[0] == module]
        if len(owned) != 1 or owned[0] == target:
            return None
        if owned[0] not in alias_nodes:
            alias_nodes[owned[0]] = graph.get_attr(owned[0])
        return alias_nodes[owned[0]]

    position = {node: i for i, node in enumerate(ep.graph.nodes)}
    firsts: set[str] = set()  # _FIRST_OUTPUT nodes translated
    for node in ep.graph.nodes:
        if node.op == "placeholder":
            new = graph.get_attr(lifted[node.name]) if node.name in lifted else graph.placeholder(node.name)
        elif node.op == "output":
            graph.output(load(node.args[0]))
            continue
        elif node.op == "get_attr":  # a higher-order op's subgraph
            _register_module(holder, str(node.target), getattr(ep.graph_module, str(node.target)))
            new = graph.get_attr(str(node.target))
        elif node.op == "call_function" and node.target in _DROPPED and not node.users:
            continue
        elif node.target is operator.getitem and isinstance(node.args[0], fx.Node) and node.args[0].name in firsts:
            env[node.name] = env[node.args[0].name]  # output 0 of a tuple op translated to it
            shape = _shape_of(node.meta.get("val"))
            if shape is not None:
                env[node.name].meta["tensor_meta"] = _Shape(shape)
            continue
        else:
            stack = node.meta.get("nn_module_stack") or {}
            module = str(list(stack.values())[-1][0]) if stack else ""
            args = load(node.args, module)
            kwargs = load(node.kwargs, module)
            assert isinstance(args, tuple) and isinstance(kwargs, dict)
            translate = _TRANSLATIONS.get(node.target) if node.op == "call_function" and _translatable(node, position) else None
            call = translate(args, kwargs) if translate is not None else None
            if call is not None and node.target in _FIRST_OUTPUT:
                firsts.add(node.name)
            if call is None:
                call = _Call(node.op, node.target, args, kwargs)
            new = graph.create_node(call.op, call.target, call.args, call.kwargs)  # type: ignore[arg-type]
        new.name = node.name
        if "torch_fn" in node.meta:  # the torch call it came from: the key _recorded.py lines calls up by
            new.meta["torch_fn"] = node.meta["torch_fn"]
        if "nn_module_stack" in node.meta:
            new.meta["nn_module_stack"] = {key: _entry(value) for key, value in node.meta["nn_module_stack"].items()}
        shape = _shape_of(node.meta.get("val"))
        if shape is not None:
            new.meta["tensor_meta"] = _Shape(shape)
        env[node.name] = new
    return fx.GraphModule(holder, graph)


def _translatable(node: fx.Node, position: Mapping[fx.Node, int]) -> bool:
    """False where the torch-level call would hide what `node` does. Of an op in
    ``_FIRST_OUTPUT`` only output 0 may be read. An op that writes its input in place
    (``relu_``, ``x += y``) becomes its out-of-place form only where nothing reads that memory
    after it (the input, views of it taken before, earlier in-place results on it) and the memory
    is no view of another tensor's; otherwise it stays ATen, and blocks the channels that reach it."""
    if node.target in _FIRST_OUTPUT and not all(user.target is operator.getitem and user.args[1] == 0 for user in node.users):
        return False
    if not _writes_input(node):
        return True
    base = node.args[0]
    while isinstance(base, fx.Node) and _writes_input(base):
        base = base.args[0]
    if not isinstance(base, fx.Node) or base.op != "call_function" or _may_alias(base):
        return False  # an input, a model tensor, a view, or an op that may return one
    shared, frontier = {base}, [base]  # the tensors that share the written memory: views, in-place results
    while frontier:
        for user in frontier.pop().users:
            if user is not node and user not in shared and _may_alias(user):
                shared.add(user)
                frontier.append(user)
    return all(position[user] < position[node] for tensor in shared for user in tensor.users if user is not node)


def _writes_input(node: fx.Node) -> bool:
    """Whether `node` is an ATen op that writes its first argument in place."""
    schema = getattr(node.target, "_schema", None)
    arguments = schema.arguments if schema is not None else []
    info = arguments[0].alias_info if arguments else None
    return node.op == "call_function" and info is not None and info.is_write and bool(node.args)


def _may_alias(node: fx.Node) -> bool:
    """Whether `node`'s output may share memory with another tensor (a view, an in-place op's
    result, an element of a returned tuple, any call that is no ATen op)."""
    schema = getattr(node.target, "_schema", None)
    return schema is None or any(ret.alias_info is not None for ret in schema.returns)


def _entry(value: object) -> object:
    """An ``nn_module_stack`` entry as fx writes it, (FQN, class): export names the class."""
    if isinstance(value, tuple) and len(value) == 2 and isinstance(value[1], str):
        found = _class_named(value[1])
        if found is not None:
            return (value[0], found)
    return value


@functools.cache
def _class_named(qualified: str) -> type | None:
    """The class a qualified name ``package.module.Class`` names (None if it cannot be found;
    only modules already imported are looked in: the model's classes are)."""
    parts = qualified.split(".")
    for cut in range(len(parts) - 1, 0, -1):
        module = sys.modules.get(".".join(parts[:cut]))
        if module is None:
            continue
        found: object = module
        for name in parts[cut:]:
            found = getattr(found, name, None)
        return found if isinstance(found, type) else None
    return None


def _shape_of(value: object) -> tuple[int, ...] | None:
    if isinstance(value, Tensor):
        try:
            return tuple(int(s) for s in value.shape)
        except TypeError:  # a symbolic size (dynamic shapes)
            return None
    return None


def _register(holder: nn.Module, fqn: str, tensor: Tensor, parameter: bool) -> None:
    owner_name, _, name = fqn.rpartition(".")
    owner = _submodule(holder, owner_name)
    if parameter:
        assert isinstance(tensor, nn.Parameter)
        owner.register_parameter(name, tensor)
    else:
        owner.register_buffer(name, tensor)


def _register_module(holder: nn.Module, fqn: str, module: nn.Module) -> None:
    owner_name, _, name = fqn.rpartition(".")
    _submodule(holder, owner_name).add_module(name, module)


def _submodule(holder: nn.Module, path: str) -> nn.Module:
    owner = holder
    for part in path.split(".") if path else ():
        child = owner._modules.get(part)
        if child is None:
            child = nn.Module()
            owner.add_module(part, child)
        owner = child
    return owner


def export_model(
    model: nn.Module, args: Sequence[object], kwargs: Mapping[str, object] | None, caller: str
) -> ExportedProgram:
    """``torch.export.export(model, args, kwargs, strict=False)``, or a PruneError from `caller`
    that says why and what to do."""
    try:
        with quiet_torch_logs():  # a failure is this function's PruneError, not torch's tracebacks on stderr
            return torch.export.export(model, tuple(args), kwargs=dict(kwargs or {}), strict=False)
    except Exception as error:  # noqa: BLE001 - any export failure is reported the same way
        text = str(error).strip()
        hint = (
            "; forward returns an object torch.export cannot return (a Hugging Face model's cache: pass "
            'example_kwargs={"use_cache": False})' if "not a known type" in text or "Cache" in text else ""
        )
        raise PruneError(
            f"{caller}: torch.export could not capture the model ({type(error).__name__}: "
            f"{text.splitlines()[0] if text else ''}){hint}; pass example inputs the model's forward takes "
            "(`example_inputs`, `example_kwargs`), or an ExportedProgram you exported yourself"
        ) from None


def export_check(
    model: nn.Module,
    pruned: nn.Module,
    shapes: ExampleShapes | None,
    changes: Mapping[tuple[str, int], int | float],
    caller: str,
    graph: fx.Graph | None = None,
) -> Callable[[], str | None]:
    """A check that the pruned copy's forward is the model's but for `changes`: the numbers
    (sizes, eps) at (node, argument index) that pruning changes. The copy is exported on the
    example shapes (zeros) and its graph compared node by node with the model's (`graph`, the
    one the groups were found in; else the model is exported too, once, on the first call);
    the check returns None if they agree, else what differs.

    First it tries the cheaper proof of :mod:`._recorded` (both forwards recorded on fake
    tensors, against `graph`); only where that proves neither is the copy exported."""
    original: list[fx.Graph] = []
    record = recorder_of(model, shapes) if shapes is not None else None

    def graph_of(module: nn.Module) -> fx.Graph:
        assert shapes is not None
        device = device_of(module)
        program = export_model(module, shapes.zero_inputs(device), shapes.zero_kwargs(device), caller)
        return torch_level_graph(program, caller).graph

    def check() -> str | None:
        if shapes is None:
            return "the groups hold no example inputs to export the pruned copy with"
        if graph is not None and record is not None:
            named = {name for name, _ in changes}
            calls = changes_by_call(graph, {n.name: _expected_args(n, changes) for n in graph.nodes if n.name in named})
            if calls is not None:
                verdict, why = compare(record, pruned, graph, shapes, calls)
                if verdict != "unknown":
                    return None if verdict == "same" else why
        try:
            after = graph_of(pruned)
        except PruneError as error:
            return f"the pruned copy could not be exported again ({error})"
        if graph is not None and not original and _differences(graph, after, changes) is None:
            return None
        if not original:  # exported otherwise (grad mode, other inputs): export the model as the copy was
            original.append(graph_of(model))
        return _differences(original[0], after, changes)

    return check


def _differences(before: fx.Graph, after: fx.Graph, changes: Mapping[tuple[str, int], int | float]) -> str | None:
    old_nodes, new_nodes = list(before.nodes), list(after.nodes)
    renamed = {new.name: old.name for old, new in zip(old_nodes, new_nodes)}  # names shift after a filled slice
    if len(old_nodes) != len(new_nodes) or not all(
        (old.op, old.target) == (new.op, new.target) or _filled_slice(old, new, changes, renamed) for old, new in zip(old_nodes, new_nodes)
    ):
        return "the pruned model's forward exports to a different structure"
    for old, new in zip(old_nodes, new_nodes):
        if (old.op, old.target) != (new.op, new.target):
            continue  # a filled slice: its input checked
        args, kwargs = _expected_args(old, changes)
        if _names(new.args, renamed) != _names(args) or _names(new.kwargs, renamed) != _names(kwargs):
            return f"`{old.name}` has arguments {_names(new.args, renamed)} {_names(new.kwargs, renamed)}, expected {_names(args)} {_names(kwargs)}"
    return None


def _expected_args(node: fx.Node, changes: Mapping[tuple[str, int], int | float]) -> tuple[tuple[object, ...], dict[str, object]]:
    """`node`'s (args, kwargs) with the changes at it made: sizes (index ~i: a slice's start) and floats (eps)."""
    sizes = {index: int(value) for (name, index), value in changes.items() if name == node.name and not isinstance(value, float)}
    args, kwargs = with_sizes(node, sizes) if sizes else (node.args, dict(node.kwargs))
    floats = {index: value for (name, index), value in changes.items() if name == node.name and isinstance(value, float)}
    if floats:
        args = tuple(floats.get(i, a) for i, a in enumerate(args))
    return tuple(args), dict(kwargs)


def _filled_slice(old: fx.Node, new: fx.Node, changes: Mapping[tuple[str, int], int | float], renamed: Mapping[str, str]) -> bool:
    """`old` is a slice ``x[:, :k]`` whose end pruning changes (in `changes`) and `new` the same
    tensor whole: the kept channels fill the slice, and export writes it as an alias."""
    if not (old.target is operator.getitem and new.op == "call_method" and new.target == "contiguous"):
        return False
    if not any(name == old.name for name, _ in changes) or not new.args or not isinstance(new.args[0], fx.Node):
        return False
    source = new.args[0]
    shapes = [n.meta.get("tensor_meta") for n in (new, source)]
    if _names(old.args[0]) != _names(source, renamed) or shapes[0] is None or shapes[0] != shapes[1]:
        return False
    sizes = {index: int(value) for (name, index), value in changes.items() if name == old.name and not isinstance(value, float)}
    index = with_sizes(old, sizes)[0][1]  # the slices as pruning expects them: each must take its whole dim
    shape = shapes[0].shape
    return isinstance(index, tuple) and len(index) <= len(shape) and all(
        isinstance(i, slice) and i.start in (None, 0) and i.step in (None, 1) and (i.stop is None or isinstance(i.stop, int) and i.stop >= shape[d])
        for d, i in enumerate(index)
    )
