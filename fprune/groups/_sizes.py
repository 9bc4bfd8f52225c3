"""Size arguments: where a view / reshape / split node writes its sizes, read and rewritten
alike by the analysis and by apply."""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import fx

# --- size arguments: where a view / reshape / split writes its sizes ----------------------------

_SIZE_KEYWORDS = ("shape", "size", "split_size_or_sections", "split_size")
_SPLITS: tuple[object, ...] = (torch.split, "split")
_CONVS: tuple[object, ...] = (F.conv1d, F.conv2d, F.conv3d)  # their size: `groups` (a depthwise conv's channel count)


def _size_slot(node: fx.Node) -> tuple[str | int, object] | None:
    """Where `node` holds its sizes: ("kw", keyword) or (index, value) of one argument that is a
    list or a number, or None when the sizes are the positional arguments after the tensor. A
    conv's one size is its ``groups`` (argument 6)."""
    if node.target in _CONVS:
        return ("groups", node.kwargs["groups"]) if "groups" in node.kwargs else (6, node.args[6] if len(node.args) > 6 else 1)
    for key in _SIZE_KEYWORDS:
        if key in node.kwargs:
            return key, node.kwargs[key]
    if node.op == "call_function" or node.target in _SPLITS or len(node.args) == 2:
        return (1, node.args[1]) if len(node.args) > 1 else None
    return None


def size_args(node: fx.Node) -> list[object]:
    """The size arguments of a view / reshape / split node (after the tensor), flattened: the
    elements of a size list or tuple, or the sizes written one by one (``x.view(b, t, 4, 16)``).
    A split's sizes are its second argument only (its dim is not a size)."""
    slot = _size_slot(node)
    if slot is None:
        return list(node.args[1:])
    value = slot[1]
    return list(value) if isinstance(value, (tuple, list)) else [value]


def with_sizes(node: fx.Node, sizes: Mapping[int, int]) -> tuple[tuple[fx.node.Argument, ...], dict[str, fx.node.Argument]]:
    """`node`'s (args, kwargs) with the size arguments at the given indices (as counted by
    :func:`size_args`) replaced; every index is replaced, in a size list as in loose sizes. A
    slice there (an index tuple of ``x[:, :k]``) gets the new value as its end; at index ``~i``
    (negative), the slice at i gets it as its start."""
    args, kwargs = list(node.args), dict(node.kwargs)
    slot = _size_slot(node)
    if slot is None:
        for index, value in sizes.items():
            args[1 + index] = value
        return tuple(args), kwargs
    where, current = slot
    if isinstance(current, (tuple, list)):
        values = list(current)
        for index, value in sizes.items():
            old = values[index if index >= 0 else ~index]  # a slice's end (``x[:, :k]``) is its size; step stays
            if index < 0:  # ~index: the start of the slice there (``x[..., s:k]`` in an exported graph)
                assert isinstance(old, slice)
                values[~index] = slice(value, old.stop, old.step)
            else:
                values[index] = slice(old.start, value, old.step) if isinstance(old, slice) else value
        new: fx.node.Argument = type(current)(values)
    else:
        (new,) = sizes.values()
    if isinstance(where, str):
        kwargs[where] = new
    else:
        args[where] = new
    if node.target in _CONVS:  # as torch.export writes it: without trailing defaults (groups=1 when one channel stays)
        while len(args) > 2 and _is_conv_default(len(args) - 1, args[-1]):
            args.pop()
    return tuple(args), kwargs


_CONV_DEFAULTS: dict[int, object] = {2: None, 3: 1, 4: 0, 5: 1, 6: 1}
"""F.conv's default bias, stride, padding, dilation, groups, by argument index."""


def _is_conv_default(index: int, value: object) -> bool:
    default = _CONV_DEFAULTS.get(index, ...)
    if isinstance(value, (list, tuple)):
        return all(v == default for v in value)
    return value is default if default is None else (isinstance(value, int) and value == default)
