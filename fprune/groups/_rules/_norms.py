"""Flow rules of norms over the channels, and what apply does for them.

An RMSNorm is exact: with the removed channels zero, ``mean(x^2)`` over all ``d`` channels is
``d_kept / d`` times the mean over the kept ones, so
``rsqrt(ms_d + eps) = sqrt(d / d_kept) * rsqrt(ms_kept + eps * d / d_kept)``; the pruned copy
multiplies the norm's weight by ``sqrt(d / d_kept)`` and its eps by ``d / d_kept``
(:class:`NormRescale`). Covered: ``nn.RMSNorm`` with a weight, and RMSNorm written out
(``x * rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight``, HF's
``LlamaRMSNorm`` with its dtype casts), recognised from its ``mean`` (a hook in
``reduce_mean_rule``).

LayerNorm and GroupNorm (modules, or ``F.layer_norm`` / ``F.group_norm`` in their subclasses)
cannot be: removing channels changes their mean and variance. They block, unless
``channel_groups(norms="renormalize")``: then they are pruned as Torch-Pruning does (affine
weight and bias sliced, statistics over the kept channels) and the group records that it is
not output-exact (:class:`Inexact`).
"""

from __future__ import annotations

import operator
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, fx, nn

from ..._errors import PruneError
from ..._ops import CAST_METHODS
from .._flow import Axis, Flow, FlowContext, HeadAxis
from .._records import NormRescale
from .._rescale import float_attributes
from ._rotary import head_pow

_OPTION = 'norms="renormalize" prunes it anyway (its statistics over the kept channels: not output-exact)'
_MULS: tuple[object, ...] = (operator.mul, torch.mul, "mul")
_ADDS: tuple[object, ...] = (operator.add, torch.add, "add")
_DIVS: tuple[object, ...] = (operator.truediv, torch.div, "div")


def _axis(ctx: FlowContext) -> Axis | None:
    from ._layout import input_axis, with_ndim

    axis = input_axis(ctx)
    return None if axis is None else with_ndim(ctx, axis)


def _last_dim(axis: Axis, what: str) -> None:
    if axis.inner != 1 or axis.outer != 1 or axis.dim != -1:
        raise PruneError(f"{what} normalizes the last dim, but the channels are on dim {axis.dim} (or flattened)")


def _channels_first(axis: Axis, what: str) -> None:
    if axis.ndim is None or axis.dim % axis.ndim != 1 or axis.inner != 1 or axis.outer != 1:
        raise PruneError(f"{what} normalizes groups of dim 1, but the channels are not on dim 1")


def _blocked(what: str) -> PruneError:
    return PruneError(
        f"{what} normalizes across the channels: removing some changes every other channel's output, so the "
        f"pruned model could not match the masked one; {_OPTION}"
    )


def _renormalized(ctx: FlowContext, axis: Axis, what: str) -> None:
    ctx.inexact(axis, f"{what} computes its statistics over the kept channels only (norms=\"renormalize\")")


# --- modules ----------------------------------------------------------------------------------


def layer_norm_rule(ctx: FlowContext) -> Flow:
    """nn.LayerNorm over the channels (its last dim): blocks, or with ``norms="renormalize"``
    its weight and bias go with the channels and the group is marked inexact."""
    module = ctx.module
    assert isinstance(module, nn.LayerNorm)
    axis = _axis(ctx)
    if axis is None:
        return None
    what = type(module).__name__  # the blocker names the node
    if ctx.norms == "block":
        raise _blocked(what)
    _last_dim(axis, what)
    if tuple(module.normalized_shape) != (len(axis.ids),):
        raise PruneError(f"{what} normalizes over the dims {tuple(module.normalized_shape)}, not over the {len(axis.ids)} channels alone")
    if module.weight is None:
        raise PruneError(f"{what} has no affine weight: fprune resizes a norm through its weight; {_OPTION} only with one")
    _carry(ctx, axis, ("weight", "bias"))
    _renormalized(ctx, axis, what)
    return axis


def group_norm_rule(ctx: FlowContext) -> Flow:
    """nn.GroupNorm over the channels (dim 1): blocks, or with ``norms="renormalize"`` every
    group loses the same in-group positions (position j of all groups is one unit), so
    `num_groups` stays; weight and bias go with the channels; the group is marked inexact."""
    module = ctx.module
    assert isinstance(module, nn.GroupNorm)
    axis = _axis(ctx)
    if axis is None:
        return None
    what = type(module).__name__
    if module.num_groups == module.num_channels == len(axis.ids):
        return per_channel_norm(ctx, axis, what)  # statistics per channel: exact, no option needed
    if ctx.norms == "block":
        raise _blocked(what)
    _group_norm(ctx, axis, what, module.num_groups, module.num_channels, module.weight is not None)
    _carry(ctx, axis, ("weight", "bias"))
    _renormalized(ctx, axis, what)
    return axis


def _group_norm(ctx: FlowContext, axis: Axis, what: str, groups: int, channels: int, affine: bool) -> None:
    _channels_first(axis, what)
    if len(axis.ids) != channels or channels % groups:
        raise PruneError(f"{what} has {channels} channels in {groups} groups, but {len(axis.ids)} channels reach it")
    if not affine:
        raise PruneError(f"{what} has no affine weight: fprune resizes a norm through its weight; {_OPTION} only with one")
    per = channels // groups
    if per == 1:
        raise PruneError(f"{what} has one channel per group: removing one would remove its whole group, which changes `num_groups`")
    if groups > 1:
        ctx.tie_positions(axis.ids, groups)


def per_channel_norm(ctx: FlowContext, axis: Axis | None = None, what: str = "") -> Flow:
    """A norm whose statistics are per channel: nn.InstanceNorm1d/2d/3d, nn.GroupNorm with one
    channel per group. Exact, like BatchNorm: a removed channel is zero, so it normalizes to 0
    (or, with running statistics, to ``-mean / std``) and the affine weight and bias, which
    ``masked_parameters`` zeroes with the channel, make it 0; the module's size follows its
    weight. Without affine parameters it blocks (fprune resizes a module through its tensors)."""
    axis = _axis(ctx) if axis is None else axis
    if axis is None:
        return None
    what = what or type(ctx.module).__name__
    _channels_first(axis, what)
    if getattr(ctx.module, "weight", None) is None or getattr(ctx.module, "bias", None) is None:
        raise PruneError(
            f"{what} `{ctx.module_fqn}` has no affine weight and bias: fprune resizes a norm through its tensors, "
            "and with running statistics a removed channel would become -mean / std; use affine=True"
        )
    _carry(ctx, axis, ("weight", "bias", "running_mean", "running_var"))
    return axis


def _carry(ctx: FlowContext, axis: Axis, names: Sequence[str]) -> None:
    for name in names:
        if getattr(ctx.module, name, None) is not None:
            ctx.carry(name, 0, Axis(0, axis.ids))


def rms_norm_module_rule(ctx: FlowContext) -> Flow:
    """nn.RMSNorm over the channels: exact with a weight (rescaled with its eps in the pruned
    copy: :class:`NormRescale`); without one, the output's scale would have to change and
    nothing can carry it: blocked."""
    module = ctx.module
    assert isinstance(module, nn.RMSNorm)
    axis = _axis(ctx)
    if axis is None:
        return None
    what = f"RMSNorm `{ctx.module_fqn}`"
    _last_dim(axis, what)
    if tuple(module.normalized_shape) != (len(axis.ids),):
        raise PruneError(f"{what} normalizes over the dims {tuple(module.normalized_shape)}, not over the {len(axis.ids)} channels alone")
    if module.weight is None:
        raise PruneError(
            f"{what} has no weight (elementwise_affine=False): pruning changes the scale of its output "
            "(its mean of squares runs over fewer channels) and there is no weight to rescale"
        )
    ctx.carry("weight", 0, Axis(0, axis.ids))
    ctx.rescale(NormRescale(ctx.node.name, f"{ctx.module_fqn}.weight", len(axis.ids), module.eps, ctx.module_fqn, "eps"), axis)
    return axis


# --- functional norms in subclasses of the modules ----------------------------------------------


def _owner(ctx: FlowContext) -> tuple[str, type] | None:
    """(FQN, class) of the module whose forward made this node, from ``nn_module_stack``."""
    stack = ctx.node.meta.get("nn_module_stack") or {}
    if not stack:
        return None
    key, entry = list(stack.items())[-1]
    if isinstance(entry, tuple) and len(entry) == 2 and isinstance(entry[0], str) and isinstance(entry[1], type):
        return entry[0], entry[1]
    return None


def _own_tensor(ctx: FlowContext, value: object, fqn: str, what: str) -> None:
    """`value` must be the get_attr node of `fqn`, used by this node alone."""
    found = ctx.attr(value)
    if found is None or found[0] != fqn or not isinstance(value, fx.Node):
        raise PruneError(f"{what} is not given its module's `{fqn}`")
    if set(value.users) != {ctx.node}:
        raise PruneError(f"{what}: `{fqn}` is used elsewhere too (a module called twice?)")


def layer_norm_call_rule(ctx: FlowContext) -> Flow:
    """``F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)`` inside a
    subclass of nn.LayerNorm (a channels-first ``LayerNorm2d`` permutes around it): as the
    module; apply resizes the module, whose `normalized_shape` forward passes.

    Blocked (the default), the channels still flow on, at the same positions: a residual
    stream through it stays one group whose blockers are its norms, rather than pieces that
    the ops after it block for other reasons."""
    flow = ctx.input(0)
    if flow is None:
        return None
    owner = _owner(ctx)
    what = f"`{ctx.node.name}` (layer_norm" + (f" in `{owner[0]}`)" if owner else ")")
    if ctx.norms == "block":
        ctx.block(flow, str(_blocked(what)))
        return flow
    axis = _axis(ctx)
    assert axis is not None
    if owner is None or not issubclass(owner[1], nn.LayerNorm):
        raise PruneError(f"{what} is not in a subclass of nn.LayerNorm, whose normalized_shape fprune would resize")
    _last_dim(axis, what)
    shape = ctx.arg(1, "normalized_shape")
    if not isinstance(shape, (tuple, list)) or list(shape) != [len(axis.ids)]:
        raise PruneError(f"{what} normalizes over {shape!r}, not over the {len(axis.ids)} channels alone")
    if ctx.exported:  # export writes the module's normalized_shape as a number: it follows the kept channels
        ctx.literal(0, len(axis.ids), axis.ids, 1)
    weight, bias = ctx.arg(2, "weight"), ctx.arg(3, "bias")
    if weight is None:
        raise PruneError(f"{what} has no affine weight: fprune resizes a norm through its weight; {_OPTION} only with one")
    _carry_affine(ctx, axis, owner[0], weight, bias, what)
    _renormalized(ctx, axis, what)
    return axis


def _carry_affine(ctx: FlowContext, axis: Axis, owner: str, weight: object, bias: object, what: str) -> None:
    """The norm's own weight (and bias, if any) go with the channels."""
    for name, value in (("weight", weight), ("bias", bias)):
        if value is not None:
            _own_tensor(ctx, value, f"{owner}.{name}", what)
            ctx.carry("", 0, Axis(0, axis.ids), fqn=f"{owner}.{name}")


def group_norm_call_rule(ctx: FlowContext) -> Flow:
    """``F.group_norm(x, self.num_groups, self.weight, self.bias, self.eps)`` inside a subclass
    of nn.GroupNorm: as the module."""
    axis = _axis(ctx)
    if axis is None:
        return None
    owner = _owner(ctx)
    what = f"`{ctx.node.name}` (group_norm" + (f" in `{owner[0]}`)" if owner else ")")
    groups = ctx.arg(1, "num_groups")
    weight, bias = ctx.arg(2, "weight"), ctx.arg(3, "bias")
    per_channel = groups == len(axis.ids)  # statistics per channel: exact, no option needed
    if ctx.norms == "block" and not per_channel:
        raise _blocked(what)
    if owner is None or not issubclass(owner[1], nn.GroupNorm):
        raise PruneError(f"{what} is not in a subclass of nn.GroupNorm, whose num_channels fprune would resize")
    if not isinstance(groups, int) or isinstance(groups, bool):
        raise PruneError(f"{what} with a computed num_groups")
    if per_channel:
        _channels_first(axis, what)
        if weight is None or bias is None:
            raise PruneError(f"{what} has no affine weight and bias: fprune resizes a norm through its tensors")
        _carry_affine(ctx, axis, owner[0], weight, bias, what)
        return axis
    _group_norm(ctx, axis, what, groups, len(axis.ids), weight is not None)
    _carry_affine(ctx, axis, owner[0], weight, bias, what)
    _renormalized(ctx, axis, what)
    return axis


# --- RMSNorm written out ------------------------------------------------------------------------


def pow_rule(ctx: FlowContext) -> Flow:
    """``x.pow(p)`` / ``torch.pow(x, p)`` / ``x ** p`` with a number ``p > 0``: elementwise, and
    0 stays 0 (an RMSNorm's square)."""
    from ._layout import input_axis

    exponent = ctx.arg(1, "exponent")
    if isinstance(heads := ctx.input(0), HeadAxis):  # Qwen3's RMSNorm over the dims of each head
        return head_pow(ctx, heads, exponent)
    axis = input_axis(ctx)
    if axis is None:
        if ctx.input(1) is not None:
            raise PruneError(f"`{ctx.node.name}` raises a number to the power of the channels")
        return None
    if isinstance(exponent, bool) or not isinstance(exponent, (int, float)) or not exponent > 0:
        raise PruneError(f"`{ctx.node.name}` raises the channels to the power {exponent!r}: only a number > 0 keeps 0 at 0")
    return axis


def _is(node: object, op: str, targets: Sequence[object]) -> bool:
    return isinstance(node, fx.Node) and node.op == op and node.target in targets


def _call(node: object, functions: Sequence[object], methods: Sequence[str] = ()) -> bool:
    return isinstance(node, fx.Node) and (
        (node.op == "call_function" and any(node.target is f for f in functions))
        or (node.op == "call_method" and node.target in methods)
    )


def _uncast(node: object) -> object:
    """`node` before any dtype casts (``.to(torch.float32)``, ``.float()``)."""
    while isinstance(node, fx.Node) and node.op == "call_method" and node.target in CAST_METHODS:
        node = node.args[0]
    return node


def _squared(node: fx.Node) -> object | None:
    """x, if `node` is ``x.pow(2)`` / ``torch.pow(x, 2)`` / ``x ** 2`` / ``x * x``; else None."""
    if _call(node, (torch.pow, operator.pow), ("pow",)) and len(node.args) == 2 and node.args[1] == 2 and not node.kwargs:
        return node.args[0]
    if _call(node, (operator.mul, torch.mul), ("mul",)) and len(node.args) == 2 and node.args[0] is node.args[1]:
        return node.args[0]
    return None


def _only_user(node: fx.Node) -> fx.Node | None:
    users = list(node.users)
    return users[0] if len(users) == 1 else None


def _other(node: fx.Node, known: fx.Node) -> object:
    """The operand of a binary `node` that is not `known` (None if `known` is not one of two)."""
    if len(node.args) != 2 or node.kwargs:
        return None
    a, b = node.args
    return b if a is known else a if b is known else None


def rms_statistic(ctx: FlowContext, axis: Axis, dims: set[int]) -> bool:
    """Whether this ``mean`` over the channels is the mean of squares of an RMSNorm written out,
    which pruning keeps exact; if so, records how (:class:`NormRescale`; with
    ``norms="renormalize"``, an :class:`Inexact` where it cannot be exact), and its output
    holds no channels. False for any other mean over the channels (the caller blocks it).

    The pattern: ``m = mean(sq(x), -1, keepdim=True)`` (``sq``: pow 2 or ``x * x``, any casts
    of x), ``r = rsqrt(m + eps)`` (or ``x / sqrt(m + eps)``), ``n = x * r``, then, after any
    casts, ``n * w`` with a 1-D model weight `w` of the channels. ``m``, ``m + eps``, ``r``
    and ``n`` have no other users, `w` no other use. A PruneError says why a norm of this
    shape cannot be pruned exactly.
    """
    node = ctx.node
    ndim = axis.ndim
    if ndim is None or not _call(node, (torch.mean,), ("mean",)) or dims != {ndim - 1} or axis.dim % ndim != ndim - 1:
        return False
    if axis.inner != 1 or axis.outer != 1 or ctx.arg(2, "keepdim", False) is not True or ctx.arg(3, "dtype") is not None:
        return False
    x = _squared(node.args[0]) if isinstance(node.args[0], fx.Node) else None
    add = _only_user(node)
    if x is None or add is None or not _call(add, (operator.add, torch.add), ("add",)):
        return False
    eps = _other(add, node)
    root = _uncast(x)
    scale = _only_user(add)
    normed: fx.Node | None = None
    if scale is not None and _call(scale, (torch.rsqrt,), ("rsqrt",)) and len(scale.args) == 1:
        normed = _only_user(scale)
        if normed is None or not _call(normed, (operator.mul, torch.mul), ("mul",)) or _uncast(_other(normed, scale)) is not root:
            return False
    elif scale is not None and _call(scale, (torch.sqrt,), ("sqrt",)) and len(scale.args) == 1:
        normed = _only_user(scale)
        if normed is None or not _call(normed, (operator.truediv, torch.div), ("div",)) or normed.args[1:] != (scale,):
            return False
        if _uncast(normed.args[0]) is not root:
            return False
    else:
        return False
    what = f"the RMSNorm at `{node.name}`" + (f" (in `{owner[0]}`)" if (owner := _owner(ctx)) else "")
    size = len(axis.ids)
    try:
        if isinstance(eps, bool) or not isinstance(eps, (int, float)) or eps < 0:
            raise PruneError(f"{what} adds an eps that is not a number written in forward ({eps!r}): fprune cannot rescale it")
        weight, offset = _weight_after(ctx, normed, size, what)
        module = owner[0] if owner else ""
        attribute = _eps_attribute(ctx.root, module, float(eps), what) if ctx.root is not None else ""
        index = 1 if add.args[0] is node else 0
        ctx.rescale(NormRescale(node.name, weight, size, float(eps), module, attribute, add.name, index, offset), axis)
    except PruneError as error:
        if ctx.norms == "block":
            raise PruneError(f"{error}; {_OPTION}") from None
        ctx.inexact(axis, f"{what} is not rescaled ({error}): it computes its statistics over the kept channels only")
    return True


def _weight_after(ctx: FlowContext, normed: fx.Node, size: int, what: str) -> tuple[str, float]:
    """The FQN of the 1-D weight that multiplies the normalized `normed` (after any casts), and
    the number added to it first (Gemma's ``x * (1.0 + w.float())``: 1.0; else 0.0)."""
    node = normed
    while True:
        user = _only_user(node)
        if user is None:
            raise PruneError(f"{what} is not followed by its weight alone, which would carry the rescale")
        if user.op == "call_method" and user.target in CAST_METHODS and user.args[0] is node:
            node = user
            continue
        break
    weight = _other(user, node) if _call(user, (operator.mul, torch.mul), ("mul",)) else None
    weight, offset = _offset_weight(weight)
    found = ctx.attr(weight)
    if found is None or not isinstance(weight, fx.Node):
        raise PruneError(f"{what} is not multiplied by a weight of the model, which would carry the rescale")
    fqn, tensor = found
    if tensor.dim() != 1 or tensor.shape[0] != size:
        raise PruneError(f"{what} is multiplied by `{fqn}` of shape {tuple(tensor.shape)}, not one entry per channel")
    if len(weight.users) != 1:
        raise PruneError(f"{what}: its weight `{fqn}` is used elsewhere too, where a rescale would change it")
    gm = ctx.node.graph.owning_module
    if gm is not None and sum(t is tensor for t in _named_tensors(gm).values()) > 1:
        raise PruneError(f"{what}: its weight `{fqn}` is tied to another tensor, which a rescale would change too")
    return fqn, offset


def _offset_weight(factor: object) -> tuple[object, float]:
    """(w, c) if `factor` is ``c + w`` / ``w + c`` with a number c != 0 and w a tensor seen through
    casts, each step used there alone (Gemma's ``1.0 + self.weight.float()``); else (factor, 0.0)."""
    if not isinstance(factor, fx.Node) or not _call(factor, (operator.add, torch.add), ("add",)) or len(factor.args) != 2 or factor.kwargs:
        return factor, 0.0
    a, b = factor.args
    number, tensor = (a, b) if isinstance(b, fx.Node) else (b, a)
    if isinstance(number, bool) or not isinstance(number, (int, float)) or number == 0 or not isinstance(tensor, fx.Node):
        return factor, 0.0
    while tensor.op == "call_method" and tensor.target in CAST_METHODS and len(tensor.users) == 1 and isinstance(tensor.args[0], fx.Node):
        tensor = tensor.args[0]
    return tensor, float(number)


def _named_tensors(module: nn.Module) -> dict[str, Tensor]:
    tensors: dict[str, Tensor] = dict(module.named_parameters(remove_duplicate=False))
    tensors.update(dict(module.named_buffers(remove_duplicate=False)))
    return tensors


def _eps_attribute(root: nn.Module, module: str, eps: float, what: str) -> str:
    """The one float attribute of `root`'s submodule `module` that holds `eps`."""
    try:
        owner = root.get_submodule(module) if module else root
    except AttributeError:
        raise PruneError(f"{what}: its module `{module}` is not found in the model") from None
    names = float_attributes(owner, eps)
    if len(names) != 1:
        found = f"{len(names)} attributes of `{module or type(root).__name__}` hold it ({', '.join(names)})" if names else "no attribute holds it"
        raise PruneError(f"{what} adds eps={eps!r}, which fprune must rescale, but {found}: it cannot be traced to exactly one")
    return names[0]


def rms_norm_call_rule(ctx: FlowContext) -> Flow:
    """``F.rms_norm(x, shape, weight, eps)`` in an ``nn.RMSNorm`` (as torch.export records the
    module): exact with the module's weight, rescaled with its eps, as the module rule."""
    axis = _axis(ctx)
    if axis is None:
        return None
    owner = _owner(ctx)
    if owner is None or not issubclass(owner[1], nn.RMSNorm):
        raise PruneError(f"`{ctx.node.name}`: F.rms_norm outside an nn.RMSNorm is not followed")
    fqn = owner[0]
    what = f"RMSNorm `{fqn}`"
    _last_dim(axis, what)
    shape = ctx.arg(1, "normalized_shape")
    if not isinstance(shape, (list, tuple)) or tuple(shape) != (len(axis.ids),):
        raise PruneError(f"{what} normalizes over the dims {shape}, not over the {len(axis.ids)} channels alone")
    weight, eps = ctx.arg(2, "weight"), ctx.arg(3, "eps")
    if weight is None:
        raise PruneError(
            f"{what} has no weight (elementwise_affine=False): pruning changes the scale of its output "
            "(its mean of squares runs over fewer channels) and there is no weight to rescale"
        )
    _own_tensor(ctx, weight, f"{fqn}.weight", what)
    if isinstance(eps, bool) or not isinstance(eps, (int, float)):
        raise PruneError(f"{what} has eps=None (the dtype's eps at run time), which fprune cannot rescale in this graph")
    ctx.carry(f"{fqn}.weight", 0, Axis(0, axis.ids), fqn=f"{fqn}.weight")
    ctx.rescale(NormRescale(ctx.node.name, f"{fqn}.weight", len(axis.ids), float(eps), fqn, "eps", ctx.node.name, 3), axis)
    return axis


def head_norm_rescale(ctx: FlowContext) -> None:
    """At the ``mean`` of an RMSNorm over the dims of each head (Qwen3's ``q_norm``, applied to
    ``q_proj(x).view(B, T, H, D)``): record, on the hidden channels the projection reads, that
    the pruned copy multiplies the whole projection by ``sqrt(size / kept)`` and the norm's eps
    by ``size / kept`` (:class:`NormRescale` with ``kept_dim=1``). Exact either way (the norm of
    ``a * q`` with eps ``a^2 * eps`` is the norm of q with eps), and it lets the norm share one
    eps with the hidden-size norms, as a Hugging Face config holds it (``rms_norm_eps``).

    Records nothing where the pattern is not exactly this (a bias, a projection or an input
    used elsewhere, no single eps attribute): the heads stay exact; only such a config could
    not describe the copy."""
    node = ctx.node
    square = node.args[0] if node.args else None
    root = _squared(square) if isinstance(square, fx.Node) else None
    add = _only_user(node)
    if not isinstance(root, fx.Node) or add is None or not _call(add, (operator.add, torch.add), ("add",)):
        return
    eps = _other(add, node)
    scale = _only_user(add)
    normed = _only_user(scale) if scale is not None and _call(scale, (torch.rsqrt,), ("rsqrt",)) else None
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not eps > 0 or normed is None or set(root.users) != {square, normed}:
        return
    if not _call(normed, (operator.mul, torch.mul), ("mul",)):
        return
    projection = root
    while projection.op == "call_method" and projection.target in ("view", "reshape", *CAST_METHODS) and isinstance(projection.args[0], fx.Node):
        projection = projection.args[0]
        if len(projection.users) != 1:
            return
    if not _call(projection, (F.linear,)) or len(projection.args) not in (2, 3) or projection.kwargs or projection.args[2:] not in ((), (None,)):
        return
    weight_node, hidden = projection.args[1], ctx.flow(projection.args[0])
    found = ctx.attr(weight_node)
    owner = _owner(ctx)
    if found is None or owner is None or not isinstance(weight_node, fx.Node) or not isinstance(hidden, Axis) or hidden.inner != 1 or hidden.outer != 1:
        return
    fqn, weight = found
    gm = node.graph.owning_module
    if weight.dim() != 2 or weight.shape[1] != len(hidden.ids) or len(weight_node.users) != 1:
        return
    if gm is not None and sum(t is weight for t in _named_tensors(gm).values()) > 1:
        return
    try:  # without the model (an exported program), apply finds it by value in the copy
        attribute = _eps_attribute(ctx.root, owner[0], float(eps), f"the RMSNorm at `{node.name}`") if ctx.root is not None else ""
    except PruneError:
        return
    index = 1 if add.args[0] is node else 0
    ctx.rescale(NormRescale(node.name, fqn, len(hidden.ids), float(eps), owner[0], attribute, add.name, index, 0.0, 1), hidden)
