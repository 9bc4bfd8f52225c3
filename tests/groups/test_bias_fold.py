"""Removed channels that hold a known non-zero constant (after ``sigmoid``, ``softplus``,
``x + 3``) fold into the next Linear's or unpadded conv's bias (issue 13): the pruned copy is
exact; a BatchNorm, a depthwise conv or a layer scale makes them zero again; where the value
cannot fold (zero padding, no bias, a value that differs between positions) the group blocks
and says why."""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import fprune
from fprune.groups import BiasFold, ChannelGroup

from ..exact import groups_with_shapes, prune_exactly
from ..purity import assert_unchanged, snapshot


def _group(groups: tuple[ChannelGroup, ...], producer: str) -> ChannelGroup:
    return next(g for g in groups if producer in g.producers)


class _Mlp(nn.Module):
    """fc1 -> act -> fc2 (on [B, C] or [B, N, C] inputs)."""

    def __init__(self, act: Callable[[Tensor], Tensor], bias: bool = True) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(6, 12), nn.Linear(12, 4, bias=bias)
        self.act = act

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.fc2(self.act(self.fc1(x)))
        return out


def _hard_sigmoid(x: Tensor) -> Tensor:
    return F.relu6(x + 3.0) / 6.0


_FOLDED: dict[str, tuple[Callable[[Tensor], Tensor], float]] = {
    "sigmoid module": (nn.Sigmoid(), 0.5),
    "softplus module": (nn.Softplus(), 0.6931471805599453),
    "torch.sigmoid": (torch.sigmoid, 0.5),
    "relu6(x + 3) / 6": (_hard_sigmoid, 0.5),
    "1 - sigmoid": (lambda x: 1 - torch.sigmoid(x), 0.5),
    "2 * sigmoid + 1": (lambda x: 2 * torch.sigmoid(x) + 1, 2.0),
    "sigmoid(x + 1) * 3": (
        lambda x: torch.sigmoid(x + 1) * 3,
        3 * torch.sigmoid(torch.tensor(1.0, dtype=torch.float64)).item(),
    ),
    "elu(x - 1)": (
        lambda x: F.elu(x - 1),
        float(F.elu(torch.tensor(-1.0, dtype=torch.float64))),
    ),
    "sigmoid, max pool": (lambda x: F.max_pool1d(torch.sigmoid(x), 1), 0.5),
}


@pytest.mark.parametrize("level", [0.3, 0.5])
@pytest.mark.parametrize("name", list(_FOLDED))
def test_a_constant_of_removed_channels_folds_into_the_next_linear_bias_exactly(
    name: str, level: float
) -> None:
    act, value = _FOLDED[name]
    torch.manual_seed(0)
    model = _Mlp(act)
    pruned, groups = prune_exactly(model, torch.randn(5, 6), level)
    group = _group(groups, "fc1.weight")
    assert group.prunable and [(f.weight, f.bias, f.dim) for f in group.folds] == [
        ("fc2.weight", "fc2.bias", 1)
    ]
    assert group.folds[0].value == pytest.approx(value, rel=1e-12)
    fc2 = pruned.get_submodule("fc2")
    assert isinstance(fc2, nn.Linear) and fc2.in_features < 12
    assert "folded into `fc2.bias` (exact)" in fprune.explain(groups)


def test_tokens_fold_like_features() -> None:
    torch.manual_seed(1)
    model = _Mlp(torch.sigmoid)
    _, groups = prune_exactly(model, torch.randn(2, 7, 6), 0.5)
    assert _group(groups, "fc1.weight").folds


def test_the_fold_changes_only_the_pruned_copy() -> None:
    torch.manual_seed(2)
    model = _Mlp(nn.Softplus()).double()
    x = torch.randn(3, 6, dtype=torch.float64)
    before = snapshot(model)
    groups = groups_with_shapes(model, x)
    masks = fprune.group_masks(model, groups, 0.5)
    pruned = fprune.apply_prune(model, masks, groups)
    assert_unchanged(model, before)
    bias = pruned.get_submodule("fc2").bias
    assert isinstance(bias, Tensor) and not torch.equal(
        bias, model.fc2.bias
    )  # fc2 keeps its rows: only the fold changed it


class _ConvNet(nn.Module):
    """conv1 (-> bn1) -> act (-> between) -> conv2."""

    def __init__(
        self,
        act: Callable[[Tensor], Tensor] = torch.sigmoid,
        between: nn.Module | None = None,
        padding: int | str = 0,
        groups: int = 1,
        padding_mode: Literal["zeros", "reflect", "replicate", "circular"] = "zeros",
        bias: bool = True,
    ) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.act = act
        self.between = between or nn.Identity()
        self.conv2 = nn.Conv2d(
            8,
            6,
            3,
            padding=padding,
            groups=groups,
            padding_mode=padding_mode,
            bias=bias,
        )

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.conv2(self.between(self.act(self.bn1(self.conv1(x)))))
        return out


def _randomize_bn(model: nn.Module) -> nn.Module:
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            for name, low, high in (
                ("running_mean", -1.0, 1.0),
                ("running_var", 0.5, 2.0),
                ("weight", 0.5, 1.5),
                ("bias", -1.0, 1.0),
            ):
                tensor = getattr(module, name)
                assert isinstance(tensor, Tensor)
                tensor.data.uniform_(low, high)
    return model.eval()


_CONVS: dict[str, Callable[[], nn.Module]] = {
    "padding 0": lambda: _ConvNet(),
    "padding 'valid'": lambda: _ConvNet(padding="valid"),
    "reflect padding": lambda: _ConvNet(padding=1, padding_mode="reflect"),
    "grouped, in-group positions": lambda: _ConvNet(groups=2),
    "max pool with padding between": lambda: _ConvNet(
        between=nn.MaxPool2d(3, 1, padding=1)
    ),
    "avg pool without padding between": lambda: _ConvNet(between=nn.AvgPool2d(2)),
    "avg pool, padding not counted": lambda: _ConvNet(
        between=nn.AvgPool2d(3, 1, padding=1, count_include_pad=False)
    ),
    "nearest upsampling between": lambda: _ConvNet(between=nn.Upsample(scale_factor=2)),
    "dropout in eval mode": lambda: _ConvNet(between=nn.Dropout(0.3)),
}


@pytest.mark.parametrize("level", [0.3, 0.5])
@pytest.mark.parametrize("name", list(_CONVS))
def test_a_constant_folds_into_an_unpadded_conv(name: str, level: float) -> None:
    torch.manual_seed(3)
    model = _randomize_bn(_CONVS[name]())
    pruned, groups = prune_exactly(model, torch.randn(2, 3, 9, 9), level)
    group = _group(groups, "conv1.weight")
    assert group.prunable and [f.bias for f in group.folds] == ["conv2.bias"]
    conv2 = pruned.get_submodule("conv2")
    assert isinstance(conv2, nn.Conv2d) and conv2.in_channels < 8


class _Cleared(nn.Module):
    """sigmoid, then an op that zeroes removed channels in the masked model, then a padded conv
    without a bias (which could take no fold)."""

    def __init__(self, clear: str) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.scale = nn.Parameter(torch.rand(8, 1, 1) + 0.5)
        self.conv2 = nn.Conv2d(8, 6, 3, padding=1, bias=False)
        self.clear = clear

    def forward(self, x: Tensor) -> Tensor:
        h = torch.sigmoid(self.conv1(x))
        scale: Tensor = self.scale
        if self.clear == "batchnorm":
            h = self.bn(h)
        elif self.clear == "F.batch_norm":
            h = F.batch_norm(
                h,
                self.bn.running_mean,
                self.bn.running_var,
                self.bn.weight,
                self.bn.bias,
            )
        elif self.clear == "depthwise conv":
            h = self.dw(h)
        elif self.clear == "layer scale":
            h = h * scale
        else:  # sigmoid(x) - 0.5 is 0 where removed
            h = h - 0.5
        out: Tensor = self.conv2(h)
        return out


@pytest.mark.parametrize(
    "clear",
    ["batchnorm", "F.batch_norm", "depthwise conv", "layer scale", "minus f(0)"],
)
def test_a_carrier_zeroed_in_the_masked_model_makes_removed_channels_zero_again(
    clear: str,
) -> None:
    torch.manual_seed(4)
    model = _randomize_bn(_Cleared(clear))
    _, groups = prune_exactly(model, torch.randn(2, 3, 7, 7), 0.5)
    group = _group(groups, "conv1.weight")
    assert group.prunable and not group.folds


def _refused_padded() -> nn.Module:
    return _ConvNet(padding=1)


_REFUSED: dict[str, tuple[Callable[[], nn.Module], str]] = {
    "zero-padded conv": (_refused_padded, "its zero padding"),
    "conv without a bias": (lambda: _ConvNet(bias=False), "it has no bias"),
    "transposed conv": (
        lambda: _TransposedAfterSigmoid(),
        "a transposed conv spreads it unevenly",
    ),
    "avg pool counting zero padding": (
        lambda: _ConvNet(between=nn.AvgPool2d(3, 1, padding=1)),
        "its value is unknown or may differ between positions",
    ),
    "bilinear upsampling": (
        lambda: _ConvNet(between=nn.Upsample(scale_factor=2, mode="bilinear")),
        "its value is unknown or may differ between positions",
    ),
    "dropout in training": (
        lambda: _ConvNet(between=nn.Dropout(0.3).train()),
        "its value is unknown or may differ between positions",
    ),
    "a buffer as factor": (
        lambda: _BufferScaled(),
        "its value is unknown or may differ between positions",
    ),
}


class _TransposedAfterSigmoid(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.up = nn.Conv2d(3, 8, 3), nn.ConvTranspose2d(8, 4, 2, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.up(torch.sigmoid(self.conv1(x)))
        return out


class _BufferScaled(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(3, 8, 3), nn.Conv2d(8, 4, 1)
        self.register_buffer("scale", torch.rand(8, 1, 1) + 0.5)

    def forward(self, x: Tensor) -> Tensor:
        scale = self.get_buffer("scale")
        out: Tensor = self.conv2(torch.sigmoid(self.conv1(x)) * scale)
        return out


@pytest.mark.parametrize("name", list(_REFUSED))
def test_a_constant_that_cannot_fold_blocks_with_the_reason(name: str) -> None:
    make, why = _REFUSED[name]
    model = make()
    groups = groups_with_shapes(model, torch.randn(2, 3, 8, 8))
    group = _group(groups, "conv1.weight")
    assert not group.prunable and not group.folds
    reasons = " ".join(b.reason for b in group.blockers)
    assert "sigmoid maps 0 to 0.5" in reasons and why in reasons, reasons


def test_a_linear_without_bias_blocks() -> None:
    groups = groups_with_shapes(_Mlp(torch.sigmoid, bias=False), torch.randn(2, 6))
    group = _group(groups, "fc1.weight")
    assert not group.prunable
    assert "cannot fold it into its bias: it has no bias" in group.blockers[0].reason


def test_a_fold_record_reads_in_explain_and_str() -> None:
    fold = BiasFold(
        "fc2", "fc2.weight", 1, "fc2.bias", 0.5, "`act`: sigmoid maps 0 to 0.5"
    )
    assert (
        str(fold)
        == "removed channels hold 0.5 at `fc2` (after `act`: sigmoid maps 0 to 0.5): folded into `fc2.bias` (exact)"
    )


class _Double(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return x * 2


class _LeafDouble(torch.fx.Tracer):
    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return isinstance(m, _Double) or super().is_leaf_module(m, module_qualified_name)


def test_after_a_user_rule_marked_handles_nonzero_the_constant_is_unknown_and_the_next_layer_blocks() -> None:
    """A user's rule that returns its input axis as it came says nothing about the value: a
    fold of the value before it (0.5, where the model holds 1.0) would be wrong."""
    model = nn.Sequential(nn.Linear(6, 12), nn.Sigmoid(), _Double(), nn.Linear(12, 4))
    gm = torch.fx.GraphModule(model, _LeafDouble().trace(model))
    rules = fprune.groups.default_flow_rules()
    rules[_Double] = fprune.groups.handles_nonzero(lambda ctx: ctx.input(0))
    group = _group(fprune.channel_groups(gm, rules=rules), "0.weight")
    assert not group.prunable and not group.folds
    assert "its value is unknown or may differ between positions" in group.blockers[0].reason


class _Offset(nn.Module):
    """sigmoid, plus a per-channel parameter (zeroed where removed in the masked model) or a
    buffer (not zeroed: its entries differ per channel), then a Linear."""

    def __init__(self, buffer: bool) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(6, 12), nn.Linear(12, 4)
        if buffer:
            self.register_buffer("offset", torch.randn(12))
        else:
            self.offset = nn.Parameter(torch.randn(12))

    def forward(self, x: Tensor) -> Tensor:
        offset: Tensor = getattr(self, "offset")  # noqa: B009 - a parameter or a buffer
        out: Tensor = self.fc2(torch.sigmoid(self.fc1(x)) + offset)
        return out


def test_a_per_channel_parameter_added_keeps_the_constant_and_a_buffer_blocks() -> None:
    torch.manual_seed(5)
    _, groups = prune_exactly(_Offset(buffer=False), torch.randn(3, 6), 0.5)
    assert [f.value for f in _group(groups, "fc1.weight").folds] == [0.5]
    blocked = _group(groups_with_shapes(_Offset(buffer=True), torch.randn(3, 6)), "fc1.weight")
    assert not blocked.prunable and "a buffer" in blocked.blockers[0].reason
