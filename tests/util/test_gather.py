"""take / take_rows_columns: the kept slices of a tensor, in one gather, in its own layout."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor, fx, nn

import fprune
from fprune._util.gather import take, take_rows_columns

_LAYOUTS = {4: torch.channels_last, 5: torch.channels_last_3d}


def _in_layout(t: Tensor, layout: str) -> Tensor:
    if layout == "channels_last" and t.dim() in _LAYOUTS:
        return t.contiguous(memory_format=_LAYOUTS[t.dim()])
    if layout == "transposed":  # a non-contiguous view: gathered into the default layout
        return t.transpose(0, 1).contiguous().transpose(0, 1)
    return t


def _x_dims(conv: type[nn.Module]) -> int:
    return 4 if conv is nn.Conv2d else 5


def _is_channels_last(t: Tensor) -> bool:
    return t.dim() in _LAYOUTS and t.is_contiguous(memory_format=_LAYOUTS[t.dim()]) and not t.is_contiguous()


@settings(max_examples=120, deadline=None)
@given(
    shape=st.lists(st.integers(1, 5), min_size=1, max_size=5),
    dims=st.sets(st.integers(0, 4), min_size=1, max_size=3),
    layout=st.sampled_from(["contiguous", "channels_last", "transposed"]),
    seed=st.integers(0, 2**16),
)
def test_take_equals_index_select_per_dim_in_the_same_layout(shape: list[int], dims: set[int], layout: str, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    base = torch.randn(shape, generator=generator, dtype=torch.float64)
    if layout == "transposed" and base.dim() < 2:
        layout = "contiguous"
    t = _in_layout(base, layout)
    index = {d: torch.randperm(shape[d], generator=generator)[: max(1, shape[d] // 2)] for d in dims if d < len(shape)}
    if not index:
        index = {0: torch.tensor([0])}
    before = t.clone()
    out = take(t, index)
    expected = t
    for dim, i in index.items():
        expected = expected.index_select(dim, i)
    assert torch.equal(out, expected) and out.dtype == t.dtype
    assert out.untyped_storage().data_ptr() != t.untyped_storage().data_ptr()
    assert out.untyped_storage().nbytes() == out.numel() * out.element_size()  # exactly the kept values
    assert out._base is None  # not a view (of a gathered temporary)
    if layout == "channels_last" and _is_channels_last(t):
        assert out.is_contiguous(memory_format=_LAYOUTS[t.dim()])
    else:
        assert out.is_contiguous()
    assert torch.equal(t, before)


def test_take_rows_columns_keeps_dtype_and_unsorted_order() -> None:
    t = torch.arange(24, dtype=torch.int32).reshape(4, 3, 2)
    out = take_rows_columns(t, torch.tensor([3, 0]), torch.tensor([2, 1]))
    assert out.dtype == torch.int32 and out.shape == (2, 2, 2)
    assert out.tolist() == [[[22, 23], [20, 21]], [[4, 5], [2, 3]]]


@pytest.mark.parametrize(("pipeline", "conv"), [("groups", nn.Conv2d), ("groups", nn.Conv3d), ("patterns", nn.Conv2d)])
def test_a_channels_last_model_is_pruned_into_channels_last_weights(pipeline: str, conv: type[nn.Conv2d] | type[nn.Conv3d]) -> None:
    """A model converted to channels_last (for oneDNN's fast kernels) keeps that layout: its
    pruned conv weights are channels_last too, and the copy computes what the masked one does."""
    torch.manual_seed(0)
    layout = _LAYOUTS[4 if conv is nn.Conv2d else 5]
    model = nn.Sequential(conv(3, 8, 3), nn.ReLU(), conv(8, 6, 3), nn.ReLU(), conv(6, 4, 1)).eval()
    for parameter in model.parameters():  # what model.to(memory_format=...) does
        parameter.data = parameter.data.contiguous(memory_format=layout) if parameter.dim() == _x_dims(conv) else parameter.data
    x = torch.randn((2, 3) + (7,) * (2 if conv is nn.Conv2d else 3)).to(memory_format=layout)
    if pipeline == "groups":
        records: list[fprune.ChannelGroup] | list[fprune.Match] = list(fprune.channel_groups(fx.symbolic_trace(model)))
        masks = fprune.group_masks(model, records, 0.5)  # type: ignore[arg-type]
    else:
        records = list(fprune.match_patterns(fx.symbolic_trace(model), fprune.default_patterns()))
        masks = {f"{i}.weight": fprune.saliency_mask(model.get_parameter(f"{i}.weight"), 0.5) for i in (0, 2)}
    pruned = fprune.apply_prune(model, masks, records)
    for i in (0, 2, 4):  # (a 1x1 kernel's weight is both channels_last and contiguous)
        weight = pruned.get_parameter(f"{i}.weight")
        assert weight.is_contiguous(memory_format=layout) and (i == 4 or not weight.is_contiguous())
    expected = torch.func.functional_call(model, fprune.masked_parameters(model, masks, records), (x,))
    torch.testing.assert_close(pruned(x), expected, rtol=1e-5, atol=1e-5)
