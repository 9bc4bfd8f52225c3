"""Silent no-ops: a call that would remove nothing although ``level > 0`` says why, and so does
``explain`` for groups with nothing to prune."""

from __future__ import annotations


import pytest
import torch
from torch import Tensor, nn

import fprune

from ..refusals import refusal



def _mlp() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))


_X = torch.randn(3, 4)


# --- no producer found ---------------------------------------------------------------------------


def test_an_exported_program_is_refused_with_what_to_do() -> None:
    model = _mlp()
    unlifted = torch.export.export(model, (_X,)).module()
    assert fprune.channel_groups(unlifted) == ()
    assert "torch.export" in fprune.explain(fprune.channel_groups(unlifted))
    refusal(
        lambda: fprune.prune_channels(unlifted, 0.5, example_inputs=(_X,)),
        "prune_channels: nothing to prune", "no producer found", "graph of ATen ops", "aten.linear.default",
        "torch.export", "Pass the ExportedProgram itself", "the nn.Module itself",
    )  # fmt: skip
    assert fprune.prune_channels(model, 0.5, example_inputs=(_X,))[0].out_features == 4  # the nn.Module itself prunes


class EinsumLinear(nn.Module):
    """A linear layer written as an einsum, which fprune has no flow rule for."""

    def __init__(self, nf: int, nx: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(nf, nx) * 0.02)

    def forward(self, x: Tensor) -> Tensor:
        return torch.einsum("...i,oi->...o", x, self.weight)


class EinsumMLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c_fc, self.c_proj = EinsumLinear(16, 4), EinsumLinear(4, 16)

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.c_proj(torch.relu(self.c_fc(x)))
        return out


def test_layers_fprune_does_not_know_are_named_with_the_rule_to_register() -> None:
    model = EinsumMLP()
    groups = fprune.channel_groups(torch.fx.symbolic_trace(model))
    assert groups == () and "register a flow rule" in fprune.explain(groups)
    refusal(
        lambda: fprune.prune_channels(model, 0.5, example_inputs=(torch.randn(2, 3, 4),)),
        "prune_channels: nothing to prune", "no producer found", "`einsum` (function einsum on `c_fc.weight`)",
        "has no flow rule", "rules[torch.einsum]", "rules=",
    )  # fmt: skip


class _Bilinear(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.mix = nn.Bilinear(4, 4, 8)

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.mix(x, x)
        return out


class _Twice(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.fc(torch.relu(self.fc(x)))
        return out


def test_the_first_layer_that_stops_the_analysis_is_named() -> None:
    refusal(lambda: fprune.prune_channels(_Bilinear(), 0.5), "no producer found", "`mix` (Bilinear), has no flow rule", "rules[Bilinear]")
    refusal(lambda: fprune.prune_channels(_Twice(), 0.5), "no producer found", "`fc` (Linear), is called 2 times in forward")


# --- groups, but nothing to prune -----------------------------------------------------------------


class _Normed(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc, self.norm, self.out = nn.Linear(4, 8), nn.LayerNorm(8), nn.Linear(8, 2)

    def forward(self, x: Tensor) -> Tensor:
        result: Tensor = self.out(self.norm(self.fc(x)))
        return result


def test_blocked_and_skipped_groups_are_explained() -> None:
    model = _Normed()
    refusal(
        lambda: fprune.prune_channels(model, 0.5),
        "prune_channels: nothing to prune", "every prunable group is returned by forward (2 channels of `out.weight`)",
        "ignore=()", "the first blocker is `norm` (8 channels of `fc.weight`)",
    )  # fmt: skip
    refusal(lambda: fprune.prune_channels(model, 0.5, ignore={"out"}), "every prunable group has a member in `ignore`", "`norm`")
    assert fprune.prune_channels(model, 0.5, ignore=()).out.out_features == 1  # what the message suggests works
    groups = fprune.channel_groups(torch.fx.symbolic_trace(model))
    assert "only groups that forward returns are prunable" in fprune.explain(groups)
    blocked = [g for g in groups if not g.prunable]
    assert "nothing to prune: all 1 groups are blocked or have no producer; the first blocker is `norm`" in fprune.explain(blocked)
    assert "nothing to prune" not in fprune.explain(fprune.channel_groups(torch.fx.symbolic_trace(_mlp())))


# --- a level too small --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("level", "options", "smallest"),
    [(1e-12, {}, 1.25001e-10), (0.2, {"round_to": 4}, 0.250001), (1e-12, {"global_ranking": True}, 0.125)],
)
def test_a_level_that_removes_nothing_names_the_smallest_that_does(level: float, options: dict[str, object], smallest: float) -> None:
    model = _mlp()
    message = refusal(
        lambda: fprune.prune_channels(model, level, **options),  # type: ignore[arg-type]
        f"prune_channels: nothing to prune, the copy would equal the model: level {level} removes no channel", f"{smallest:.6g}",
    )
    if "round_to" in options:
        assert "round_to=4" in message
    pruned = fprune.prune_channels(model, smallest, **options)  # type: ignore[arg-type]
    assert pruned.get_parameter("0.weight").shape[0] < 8


def test_level_zero_is_an_explicit_no_op() -> None:
    model = _mlp()
    copy = fprune.prune_channels(model, 0.0)
    assert copy is not model and copy[0].out_features == 8
