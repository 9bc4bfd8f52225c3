"""The cheap proof export_check tries first (fprune/groups/_recorded.py): both forwards recorded
on fake tensors and compared call by call with the changes the exported graph's sizes make; the
copy is exported again only where that proves nothing."""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

import fprune
import fprune.groups._export as export_module
from fprune._util.running import example_shapes
from fprune.groups._recorded import Change, _Call, _record, _verdict, changes_by_call, compare, recorder_of


class FlexHeads(nn.Module):
    """Attention whose view takes the head count from an attribute and the head size from -1:
    a stale count would run, with the wrong head size."""

    def __init__(self) -> None:
        super().__init__()
        self.n_head = 4
        self.qkv = nn.Linear(16, 48)
        self.out = nn.Linear(16, 16)

    def forward(self, x: Tensor) -> Tensor:
        b, t, _ = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.n_head, -1).permute(2, 0, 3, 1, 4).unbind(0)
        y = F.scaled_dot_product_attention(q, k, v)
        out: Tensor = self.out(y.transpose(1, 2).reshape(b, t, -1))
        return out


class ExportOnlyBranch(nn.Module):
    """A forward that runs other ops while exported than eagerly: the records cannot line up."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(8, 16)
        self.b = nn.Linear(16, 8)

    def forward(self, x: Tensor) -> Tensor:
        h = torch.relu(self.a(x))
        if torch.compiler.is_exporting():
            h = h * 1.0
        out: Tensor = self.b(h)
        return out


@pytest.fixture
def exports(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[nn.Module]]:
    """The modules export_check exports (the proof failed for them)."""
    seen: list[nn.Module] = []
    original = export_module.export_model

    def counting(module: nn.Module, *args: object, **kwargs: object) -> torch.export.ExportedProgram:
        seen.append(module)
        return original(module, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(export_module, "export_model", counting)
    yield seen


def _pruned(model: nn.Module, x: Tensor, level: float = 0.5) -> tuple[nn.Module, tuple[fprune.ChannelGroup, ...], dict[str, Tensor]]:
    groups = fprune.channel_groups(torch.export.export(model, (x,), strict=False))
    masks = fprune.group_masks(model, groups, level)
    pruned = fprune.apply_prune(model, masks, groups)
    with torch.no_grad():
        torch.testing.assert_close(pruned(x), functional_call(model, fprune.masked_parameters(model, masks, groups), (x,)))
    return pruned, groups, masks


def test_an_attribute_head_count_is_proven_without_exporting_the_copy(exports: list[nn.Module]) -> None:
    model = FlexHeads().double()
    pruned, _, _ = _pruned(model, torch.randn(2, 5, 16, dtype=torch.float64))
    assert getattr(pruned, "n_head") == 2 and model.n_head == 4
    assert exports == []


def _head_changes(model: nn.Module, x: Tensor) -> tuple[fprune.ChannelGroup, dict[str, list[Change]]]:
    groups = fprune.channel_groups(torch.export.export(model, (x,), strict=False))
    group = next(g for g in groups if g.literals)
    assert group.exported is not None
    literal = group.literals[0]
    node = next(n for n in group.exported.nodes if n.name == literal.node)
    from fprune.groups._export import _expected_args

    changes = changes_by_call(group.exported, {node.name: _expected_args(node, {(literal.node, literal.index): literal.value // 2})})
    assert changes is not None
    return group, changes


def test_a_stale_head_count_is_not_proven() -> None:
    model, x = FlexHeads().double(), torch.randn(2, 5, 16, dtype=torch.float64)
    pruned, groups, _ = _pruned(model, x)
    group, changes = _head_changes(model, x)
    shapes = example_shapes((x,))
    assert group.exported is not None
    assert compare(recorder_of(model, shapes), pruned, group.exported, shapes, changes) == ("same", "")
    stale = copy.deepcopy(pruned)
    setattr(stale, "n_head", 4)  # runs: view(b, t, 3, 4, -1) takes 1 channel per head
    stale(x)
    verdict, why = compare(recorder_of(model, shapes), stale, group.exported, shapes, changes)
    assert verdict == "differs" and "`view_1` gets ['<tensor>', 2, 5, 3, 4, -1" in why, why


def test_a_forward_that_exports_otherwise_falls_back_to_exporting(exports: list[nn.Module]) -> None:
    model = ExportOnlyBranch().double()
    _pruned(model, torch.randn(3, 8, dtype=torch.float64))
    assert exports == [] or all(isinstance(m, ExportOnlyBranch) for m in exports)  # no sizes to check: nothing to prove
    heads = FlexHeads().double()
    x = torch.randn(2, 5, 16, dtype=torch.float64)
    _, changes = _head_changes(heads, x)
    group = next(g for g in fprune.channel_groups(torch.export.export(model, (torch.randn(3, 8, dtype=torch.float64),), strict=False)))
    assert group.exported is not None
    shapes = example_shapes((torch.randn(3, 8, dtype=torch.float64),))
    record = recorder_of(model, shapes)()
    assert record is not None and "mul_1" not in record.calls  # the eager forward skips the exported branch


def test_which_of_two_equal_numbers_changed_must_be_certain() -> None:
    before = _Call(("<tensor>", 1, 2, 2, 8), ((1, 2, 2, 8),))
    right = _Call(("<tensor>", 1, 1, 2, 8), ((1, 1, 2, 8),))
    wrong = _Call(("<tensor>", 1, 2, 1, 8), ((1, 2, 1, 8),))
    node = Change(True, ("<tensor>", 1, 2, 2, 8), ("<tensor>", 1, 1, 2, 8), ((2, 1),))
    assert _verdict(before, right, [node]) == "same"  # the call's arguments are its node's: place by place
    assert _verdict(before, wrong, [node]) == "differs"
    loose = Change(False, ("<tensor>", 0, 2, 1), ("<tensor>", 0, 1, 1), ((2, 1),))  # one of several nodes of the call
    assert _verdict(before, right, [loose]) == "unknown"  # two 2s, one change: which one is unknown
    assert _verdict(_Call(("<tensor>", 1, 4, 8), ()), _Call(("<tensor>", 1, 2, 8), ()), [loose._replace(pairs=((4, 2),))]) == "same"
    assert _verdict(before, before, [node]) == "differs"  # a change that did not happen
    assert _verdict(before, before, [loose]) == "unknown"
    assert _verdict(before, _Call(("<tensor>", True, 2, 2, 8), ()), []) == "unknown"  # True is no 1


def test_recording_never_writes_the_models_buffers() -> None:
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 4, 3)).train()
    before = copy.deepcopy(model.state_dict())
    assert _record(model, example_shapes((torch.randn(2, 3, 8, 8),))) is not None
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    pruned = fprune.prune_channels(model, 0.5, example_inputs=(torch.randn(2, 3, 8, 8),), graph="export")
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items()) and model.training
    assert isinstance(pruned[0], nn.Conv2d) and pruned[0].out_channels == 4


def test_a_hugging_face_decoder_is_proven_without_a_second_export(exports: list[nn.Module]) -> None:
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2
    )
    model = transformers.LlamaForCausalLM(config).double().eval()
    ids = torch.randint(0, 64, (2, 7))
    groups = fprune.channel_groups(torch.export.export(model, (ids,), kwargs={"use_cache": False}, strict=False))
    masks = fprune.group_masks(model, groups, 0.5)  # hidden size, heads (a repeat_kv expand of 2 x 2), MLP
    pruned = fprune.apply_prune(model, masks, groups)
    assert exports == []
    run: Callable[[nn.Module], Tensor] = lambda m: m(ids, use_cache=False).logits  # noqa: E731
    with torch.no_grad():
        expected = functional_call(model, fprune.masked_parameters(model, masks, groups), (ids,), {"use_cache": False}).logits
        torch.testing.assert_close(run(pruned), expected)
    assert getattr(pruned, "config").num_key_value_heads == 1
