"""prune_optimizer_state: training continues on the pruned copy as it would on the masked model.

The oracle: one optimizer step on the pruned copy (with the sliced state) must change every
kept entry exactly as one step on the masked original (``functional_call`` with
``masked_parameters``, gradients flowing to the original parameters) changes it. Kept entries
are found independently of fprune's slicing code: by hand for the pattern models, from the
``ChannelGroup`` records for the group models. Changes (deltas) are compared, not values: a
bias that ``apply_prune`` folds a constant into differs from the original by that constant.
Steps are ~1e-3 to 1e-2; the tolerance (1e-9) only absorbs Adam's normalisation of gradients
that are zero but for rounding (a key bias in attention, a bias before a BatchNorm).
"""

from __future__ import annotations

import copy
import io
from collections.abc import Callable, Iterable, Mapping, Sequence

import pytest
import torch
from torch import Tensor, nn
from torch.func import functional_call

import fprune

from .models import ConvBNNet, LSTMNet, TiedEmbeddingLM, TiedLinear
from .zoo import ZOO

OptimizerFactory = Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer]

OPTIMIZERS: dict[str, OptimizerFactory] = {
    "adam-amsgrad": lambda p: torch.optim.Adam(p, lr=1e-2, amsgrad=True),
    "adamw": lambda p: torch.optim.AdamW(p, lr=1e-2, weight_decay=0.1),
    "sgd-momentum": lambda p: torch.optim.SGD(p, lr=1e-2, momentum=0.9, nesterov=True, weight_decay=1e-3),
    "rmsprop": lambda p: torch.optim.RMSprop(p, lr=1e-3, momentum=0.5, centered=True),
}

Records = Sequence[fprune.Match] | Sequence[fprune.ChannelGroup]
Kept = dict[str, dict[int, Tensor]]  # per parameter FQN: kept indices per dim (dims not listed keep all)


def _loss(out: Tensor) -> Tensor:
    target = torch.linspace(-1, 1, out.numel(), dtype=out.dtype).reshape(out.shape)
    return nn.functional.mse_loss(out, target)


def _masked_step(model: nn.Module, optimizer: torch.optim.Optimizer, masks: Mapping[str, Tensor], records: Records, x: Tensor, prune_bias: bool = True) -> None:
    out = functional_call(model, fprune.masked_parameters(model, masks, records, prune_bias=prune_bias), (x,))
    optimizer.zero_grad()
    torch.autograd.backward(_loss(out))
    optimizer.step()


def _plain_step(model: nn.Module, optimizer: torch.optim.Optimizer, x: Tensor) -> None:
    optimizer.zero_grad()
    torch.autograd.backward(_loss(model(x)))
    optimizer.step()


def _values(model: nn.Module) -> dict[str, Tensor]:
    return {k: v.detach().clone() for k, v in model.named_parameters()}


def _cut(tensor: Tensor, kept: Mapping[int, Tensor]) -> Tensor:
    for dim, index in kept.items():
        tensor = tensor.index_select(dim, index)
    return tensor


def _step_mismatches(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    pruned: nn.Module,
    pruned_optimizer: torch.optim.Optimizer,
    masks: Mapping[str, Tensor],
    records: Records,
    kept: Kept,
    x: Tensor,
    prune_bias: bool = True,
    skip: frozenset[str] = frozenset(),
) -> list[str]:
    """One step on each side; the FQNs whose kept entries changed differently (or not at all)."""
    before, pruned_before = _values(model), _values(pruned)
    _masked_step(model, optimizer, masks, records, x, prune_bias)
    _plain_step(pruned, pruned_optimizer, x)
    after, pruned_after = _values(model), _values(pruned)
    bad = []
    moved = 0
    for fqn in pruned_before:
        if fqn in skip:
            continue
        expected = _cut(after[fqn] - before[fqn], kept.get(fqn, {}))
        got = pruned_after[fqn] - pruned_before[fqn]
        moved += int(bool(got.abs().max() > 1e-6))
        if got.shape != expected.shape or not torch.allclose(got, expected, rtol=1e-7, atol=1e-9):
            bad.append(fqn)
    assert moved > len(pruned_before) // 2, "the step moved too few parameters to test anything"
    return bad


def _roll_rows(state: dict[str, object], index: int, key: str) -> dict[str, object]:
    """A copy of a prune_optimizer_state result with one state tensor's rows rotated by one."""
    broken = copy.deepcopy(state)
    per_param = broken["state"]
    assert isinstance(per_param, dict)
    value = per_param[index][key]
    assert isinstance(value, Tensor) and value.shape[0] > 1
    per_param[index][key] = value.roll(1, dims=0)
    return broken


# --- kept entries, found without fprune's slicing code ----------------------------------------


def _convbn_kept(masks: Mapping[str, Tensor]) -> Kept:
    """ConvBNNet with masks on conv1 and conv2 (head: 4 flattened features per conv2 channel)."""
    k1, k2 = (masks[f].nonzero().squeeze(1) for f in ("conv1.weight", "conv2.weight"))
    columns = masks["conv2.weight"].repeat_interleave(4).nonzero().squeeze(1)
    kept: Kept = {f: {0: k1} for f in ("conv1.weight", "conv1.bias", "bn1.weight", "bn1.bias")}
    kept.update({f: {0: k2} for f in ("conv2.bias", "bn2.weight", "bn2.bias")})
    kept["conv2.weight"] = {0: k2, 1: k1}
    kept["head.weight"] = {1: columns}
    return kept


def _group_kept(model: nn.Module, groups: Sequence[fprune.ChannelGroup], masks: Mapping[str, Tensor]) -> Kept:
    """Kept indices per parameter and dim, read from the groups' member records."""
    params = dict(model.named_parameters())
    removed: dict[str, dict[int, set[int]]] = {}
    for group in groups:
        key = next((p for p in group.producers if p in masks), None)
        if key is None:
            continue
        source = next(m for m in group.members if m.fqn == key and m.role == "producer")
        keep: list[bool | None] = [None] * group.size
        for position, channel in zip(source.positions, source.channels):
            keep[channel] = bool(masks[key][position])
        for unit in group.units:  # a head is kept whole: its key / value channels follow its query channels
            (decided,) = {keep[c] for c in unit if keep[c] is not None}
            for channel in unit:
                keep[channel] = decided
        assert None not in keep
        for member in group.members:
            gone = removed.setdefault(member.fqn, {}).setdefault(member.dim, set())
            gone.update(p for p, c in zip(member.positions, member.channels) if not keep[c])
    kept: Kept = {}
    for fqn, dims in removed.items():
        if fqn in params:
            kept[fqn] = {
                dim: torch.tensor([i for i in range(params[fqn].shape[dim]) if i not in gone], dtype=torch.long)
                for dim, gone in dims.items()
                if gone
            }
    return kept


# --- models -----------------------------------------------------------------------------------


def _convbn() -> tuple[nn.Module, Tensor, dict[str, Tensor], tuple[fprune.Match, ...], Kept]:
    torch.manual_seed(0)
    model = ConvBNNet().double().eval()
    x = torch.randn(4, 3, 14, 14, dtype=torch.float64)
    matches = fprune.match_patterns(torch.fx.symbolic_trace(model), fprune.default_patterns())
    masks = {"conv1.weight": fprune.saliency_mask(model.conv1.weight, 0.5), "conv2.weight": fprune.saliency_mask(model.conv2.weight, 0.25)}
    return model, x, masks, matches, _convbn_kept(masks)


class _Residual(nn.Module):
    """A residual stream over two convs with BatchNorm, a concat, a depthwise conv and a head."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(8)
        self.depthwise = nn.Conv2d(16, 16, 3, padding=1, groups=16)
        self.fc = nn.Linear(16, 12)
        self.head = nn.Linear(12, 3)

    def forward(self, x: Tensor) -> Tensor:
        h = torch.relu(self.bn1(self.conv1(x)))
        h = h + torch.relu(self.bn2(self.conv2(h)))
        h = self.depthwise(torch.cat([h, h * 0.5], dim=1))
        pooled = torch.flatten(nn.functional.adaptive_avg_pool2d(h, 1), 1)
        out: Tensor = self.head(torch.relu(self.fc(pooled)))
        return out


def _grouped(name: str) -> tuple[nn.Module, Tensor, dict[str, Tensor], tuple[fprune.ChannelGroup, ...], Kept]:
    if name == "residual":
        torch.manual_seed(0)
        model: nn.Module = _Residual().eval()
        x = torch.randn(2, 3, 6, 6)
    else:
        model, x = ZOO[name]()
    model = model.double()
    x = x.double() if x.is_floating_point() else x
    groups = fprune.channel_groups(torch.fx.symbolic_trace(model), example_inputs=(x,))
    masks = fprune.group_masks(model, groups, 0.5)
    assert masks
    return model, x, masks, groups, _group_kept(model, groups, masks)


# --- the step equality -------------------------------------------------------------------------


@pytest.mark.parametrize("kind", sorted(OPTIMIZERS))
def test_a_step_on_the_pruned_copy_equals_a_masked_step_patterns(kind: str) -> None:
    model, x, masks, matches, kept = _convbn()
    optimizer = OPTIMIZERS[kind](model.parameters())
    for _ in range(3):
        _masked_step(model, optimizer, masks, matches, x)
    state = fprune.prune_optimizer_state(optimizer, model, masks, matches)
    pruned = fprune.apply_prune(model, masks, matches)
    pruned_optimizer = OPTIMIZERS[kind](pruned.parameters())
    pruned_optimizer.load_state_dict(state)
    # the same start, and a wrongly sliced state would be caught: rows of conv2.weight's first
    # state tensor rotated make conv2.weight's step differ
    twin, twin_optimizer = copy.deepcopy((model, optimizer))
    broken_pruned = fprune.apply_prune(model, masks, matches)
    broken_optimizer = OPTIMIZERS[kind](broken_pruned.parameters())
    first_key = next(k for k, v in optimizer.state[model.get_parameter("conv2.weight")].items() if isinstance(v, Tensor) and v.dim() > 0)
    broken_optimizer.load_state_dict(_roll_rows(state, 4, first_key))
    assert [n for n, _ in pruned.named_parameters()][4] == "conv2.weight"

    assert _step_mismatches(model, optimizer, pruned, pruned_optimizer, masks, matches, kept, x) == []
    assert _step_mismatches(twin, twin_optimizer, broken_pruned, broken_optimizer, masks, matches, kept, x) == ["conv2.weight"]


@pytest.mark.parametrize("name", ["residual", "vit", "llama", "lstm_lm"])
@pytest.mark.parametrize("kind", ["adam-amsgrad", "sgd-momentum"])
def test_a_step_on_the_pruned_copy_equals_a_masked_step_groups(name: str, kind: str) -> None:
    model, x, masks, groups, kept = _grouped(name)
    optimizer = OPTIMIZERS[kind](model.parameters())
    for _ in range(2):
        _masked_step(model, optimizer, masks, groups, x)
    state = fprune.prune_optimizer_state(optimizer, model, masks, groups)
    pruned = fprune.apply_prune(model, masks, groups)
    pruned_optimizer = OPTIMIZERS[kind](pruned.parameters())
    pruned_optimizer.load_state_dict(state)
    assert any(p.shape != q.shape for p, q in zip(model.parameters(), pruned.parameters()))
    rescaled = frozenset(r.weight for g in groups for r in g.rescales)  # RMSNorm weights * sqrt(size / kept): not step-exact
    assert bool(rescaled) == (name == "llama")
    assert _step_mismatches(model, optimizer, pruned, pruned_optimizer, masks, groups, kept, x, skip=rescaled) == []


def test_the_group_oracle_catches_a_wrong_slice() -> None:
    model, x, masks, groups, kept = _grouped("residual")
    optimizer = OPTIMIZERS["adam-amsgrad"](model.parameters())
    _masked_step(model, optimizer, masks, groups, x)
    state = fprune.prune_optimizer_state(optimizer, model, masks, groups)
    pruned = fprune.apply_prune(model, masks, groups)
    names = [n for n, _ in pruned.named_parameters()]
    pruned_optimizer = OPTIMIZERS["adam-amsgrad"](pruned.parameters())
    pruned_optimizer.load_state_dict(_roll_rows(state, names.index("fc.weight"), "exp_avg"))
    assert _step_mismatches(model, optimizer, pruned, pruned_optimizer, masks, groups, kept, x) == ["fc.weight"]


def test_an_lstm_chain_patterns() -> None:
    torch.manual_seed(5)
    model = LSTMNet(layers=2).double()
    x = torch.randn(3, 4, 5, dtype=torch.float64)
    matches = fprune.match_patterns(torch.fx.symbolic_trace(model), fprune.default_patterns())
    masks = {f"lstm.weight_ih_l{i}": fprune.lstm_saliency_mask(model.get_parameter(f"lstm.weight_ih_l{i}"), 0.5) for i in (0, 1)}
    units = [masks[f"lstm.weight_ih_l{i}"][:8].nonzero().squeeze(1) for i in (0, 1)]
    rows = [masks[f"lstm.weight_ih_l{i}"].nonzero().squeeze(1) for i in (0, 1)]
    kept: Kept = {"linear.weight": {1: units[1]}}
    for i in (0, 1):
        kept[f"lstm.weight_ih_l{i}"] = {0: rows[i]} if i == 0 else {0: rows[i], 1: units[0]}
        kept[f"lstm.weight_hh_l{i}"] = {0: rows[i], 1: units[i]}
        kept[f"lstm.bias_ih_l{i}"] = kept[f"lstm.bias_hh_l{i}"] = {0: rows[i]}
    optimizer = OPTIMIZERS["adam-amsgrad"](model.parameters())
    for _ in range(2):
        _masked_step(model, optimizer, masks, matches, x)
    pruned = fprune.apply_prune(model, masks, matches)
    pruned_optimizer = OPTIMIZERS["adam-amsgrad"](pruned.parameters())
    pruned_optimizer.load_state_dict(fprune.prune_optimizer_state(optimizer, model, masks, matches))
    assert _step_mismatches(model, optimizer, pruned, pruned_optimizer, masks, matches, kept, x) == []


class _Folding(nn.Module):
    """Sigmoid (act(0) != 0) and bias-free consumers: apply_prune folds constants into biases."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(6, 8)
        self.fc2 = nn.Linear(8, 7, bias=False)
        self.fc3 = nn.Linear(7, 5)
        self.fc4 = nn.Linear(5, 3, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.fc4(torch.sigmoid(self.fc3(torch.relu(self.fc2(torch.relu(self.fc1(x)))))))
        return out


@pytest.mark.parametrize("prune_bias", [True, False])
def test_folded_and_added_biases(prune_bias: bool) -> None:
    torch.manual_seed(3)
    model = _Folding().double()
    x = torch.randn(5, 6, dtype=torch.float64)
    matches = fprune.match_patterns(torch.fx.symbolic_trace(model), fprune.default_patterns())
    masks = {f"fc{i}.weight": fprune.saliency_mask(model.get_parameter(f"fc{i}.weight"), 0.4) for i in (1, 2, 3)}
    k1, k2, k3 = (masks[f"fc{i}.weight"].nonzero().squeeze(1) for i in (1, 2, 3))
    kept: Kept = {"fc1.weight": {0: k1}, "fc1.bias": {0: k1}, "fc2.weight": {0: k2, 1: k1}, "fc3.weight": {0: k3, 1: k2}, "fc3.bias": {0: k3}, "fc4.weight": {1: k3}}
    optimizer = OPTIMIZERS["adam-amsgrad"](model.parameters())
    for _ in range(2):
        _masked_step(model, optimizer, masks, matches, x, prune_bias)
    state = fprune.prune_optimizer_state(optimizer, model, masks, matches, prune_bias=prune_bias)
    pruned = fprune.apply_prune(model, masks, matches, prune_bias=prune_bias)
    added = {n for n, _ in pruned.named_parameters()} - {n for n, _ in model.named_parameters()}
    # sigmoid(0) != 0 always folds into fc4 (which gets a bias); relu(fc1.bias) only without prune_bias
    assert added == ({"fc4.bias"} if prune_bias else {"fc2.bias", "fc4.bias"})
    names = [n for n, _ in pruned.named_parameters()]
    groups = state["param_groups"]
    assert isinstance(groups, list) and groups[0]["params"] == list(range(len(names)))
    per_param = state["state"]
    assert isinstance(per_param, dict) and set(per_param) == {i for i, n in enumerate(names) if n not in added}
    pruned_optimizer = OPTIMIZERS["adam-amsgrad"](pruned.parameters())
    pruned_optimizer.load_state_dict(state)
    assert _step_mismatches(model, optimizer, pruned, pruned_optimizer, masks, matches, kept, x, prune_bias, skip=frozenset(added)) == []


def test_param_groups_missing_and_stateless_parameters_and_ties() -> None:
    torch.manual_seed(4)
    model = TiedEmbeddingLM().double()
    ids = torch.randint(0, 10, (3, 5))
    matches = fprune.match_patterns(torch.fx.symbolic_trace(model), fprune.default_patterns())
    masks = {"fc1.weight": fprune.saliency_mask(model.fc1.weight, 0.5)}
    kept: Kept = {"fc1.weight": {0: masks["fc1.weight"].nonzero().squeeze(1)}, "fc1.bias": {0: masks["fc1.weight"].nonzero().squeeze(1)}, "fc2.weight": {1: masks["fc1.weight"].nonzero().squeeze(1)}}
    model.fc2.bias.requires_grad_(False)  # in the optimizer, never stepped: no state

    def build(m: nn.Module) -> torch.optim.Optimizer:  # the tied embedding/out weight once; fc1.bias not at all
        return torch.optim.Adam(
            [
                {"params": [m.get_parameter("fc2.weight"), m.get_parameter("fc2.bias"), m.get_parameter("embed.weight")], "lr": 1e-2},
                {"params": [m.get_parameter("fc1.weight")], "lr": 3e-2, "betas": (0.5, 0.9)},
            ]
        )

    optimizer = build(model)
    for _ in range(2):
        _masked_step(model, optimizer, masks, matches, ids)
    assert model.fc2.bias not in optimizer.state
    state = fprune.prune_optimizer_state(optimizer, model, masks, matches)
    pruned = fprune.apply_prune(model, masks, matches)
    assert pruned.get_parameter("out.weight") is pruned.get_parameter("embed.weight")
    groups = state["param_groups"]
    assert isinstance(groups, list) and [g["params"] for g in groups] == [[0, 1, 2], [3]]
    assert [g["lr"] for g in groups] == [1e-2, 3e-2] and groups[1]["betas"] == (0.5, 0.9)
    per_param = state["state"]
    assert isinstance(per_param, dict) and sorted(per_param) == [0, 2, 3]
    pruned_optimizer = build(pruned)
    pruned_optimizer.load_state_dict(state)
    # fc1.bias is not in the optimizer: it does not move on either side
    assert _step_mismatches(model, optimizer, pruned, pruned_optimizer, masks, matches, kept, ids) == []
    assert torch.equal(pruned.get_parameter("fc1.bias"), model.fc1.bias[masks["fc1.weight"]])


def test_a_state_dict_with_param_names_or_param_fqns_and_a_weights_only_round_trip() -> None:
    model, x, masks, matches, kept = _convbn()
    optimizer = torch.optim.Adam(model.named_parameters(), lr=1e-2)
    for _ in range(2):
        _masked_step(model, optimizer, masks, matches, x)
    buffer = io.BytesIO()
    torch.save(optimizer.state_dict(), buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    from_dict = fprune.prune_optimizer_state(saved, model, masks, matches)
    from_optimizer = fprune.prune_optimizer_state(optimizer, model, masks, matches)
    saved["param_groups"][0].pop("param_names")
    from_fqns = fprune.prune_optimizer_state(saved, model, masks, matches, param_fqns=[n for n, _ in model.named_parameters()])
    groups = from_dict["param_groups"]
    assert isinstance(groups, list) and groups[0]["param_names"] == [n for n, _ in model.named_parameters()]
    for other in (from_optimizer, from_fqns):
        assert _same_state(from_dict, other)
    pruned = fprune.apply_prune(model, masks, matches)
    pruned_optimizer = torch.optim.Adam(pruned.named_parameters(), lr=1e-2)
    pruned_optimizer.load_state_dict(from_dict)
    assert _step_mismatches(model, optimizer, pruned, pruned_optimizer, masks, matches, kept, x) == []


def _same_state(a: Mapping[str, object], b: Mapping[str, object]) -> bool:
    sa, sb = a["state"], b["state"]
    assert isinstance(sa, dict) and isinstance(sb, dict)
    if sa.keys() != sb.keys():
        return False
    for index in sa:
        if sa[index].keys() != sb[index].keys() or not all(torch.equal(sa[index][k], sb[index][k]) for k in sa[index]):
            return False
    ga, gb = a["param_groups"], b["param_groups"]
    assert isinstance(ga, list) and isinstance(gb, list)
    return [g["params"] for g in ga] == [g["params"] for g in gb]


def test_inputs_are_left_unchanged_and_nothing_is_shared() -> None:
    model, x, masks, matches, _ = _convbn()
    optimizer = OPTIMIZERS["adam-amsgrad"](model.parameters())
    _masked_step(model, optimizer, masks, matches, x)
    before = optimizer.state_dict()
    snapshot = {i: {k: (id(v), v.clone()) for k, v in s.items()} for i, s in before["state"].items()}
    groups = copy.deepcopy(before["param_groups"])
    params = {k: (id(v), v.detach().clone()) for k, v in model.named_parameters()}
    mask_copies = {k: v.clone() for k, v in masks.items()}
    state = fprune.prune_optimizer_state(optimizer, model, masks, matches)
    after = optimizer.state_dict()
    assert after["param_groups"] == groups
    for index, values in snapshot.items():
        for key, (ident, value) in values.items():
            assert id(after["state"][index][key]) == ident and torch.equal(after["state"][index][key], value)
    for fqn, (ident, value) in params.items():
        assert id(model.get_parameter(fqn)) == ident and torch.equal(model.get_parameter(fqn), value)
    assert all(torch.equal(masks[k], v) for k, v in mask_copies.items())
    originals = {v.data_ptr() for s in before["state"].values() for v in s.values()}
    per_param = state["state"]
    assert isinstance(per_param, dict)
    for values in per_param.values():
        for value in values.values():
            assert value.data_ptr() not in originals


def test_a_graph_module_and_an_untouched_model() -> None:
    model, x, masks, matches, kept = _convbn()
    gm = torch.fx.symbolic_trace(model)  # shares the parameters
    optimizer = OPTIMIZERS["sgd-momentum"](model.parameters())
    _masked_step(model, optimizer, masks, matches, x)
    assert _same_state(fprune.prune_optimizer_state(optimizer, gm, masks, matches), fprune.prune_optimizer_state(optimizer, model, masks, matches))
    same = fprune.prune_optimizer_state(optimizer, model, {}, matches)
    assert _same_state(same, optimizer.state_dict())


# --- bad input ---------------------------------------------------------------------------------


def test_an_optimizer_over_another_model_is_refused() -> None:
    model, x, masks, matches, _ = _convbn()
    other = copy.deepcopy(model)
    optimizer = torch.optim.Adam(other.parameters())
    with pytest.raises(fprune.PruneError, match=r"optimizer parameter 0 \(param group 0, shape \(8, 3, 3, 3\)\) is not a parameter of the ConvBNNet given; pass the model the optimizer was built over"):
        fprune.prune_optimizer_state(optimizer, model, masks, matches)


def test_a_state_dict_must_name_its_parameters() -> None:
    model, x, masks, matches, _ = _convbn()
    optimizer = torch.optim.Adam(model.parameters())
    _masked_step(model, optimizer, masks, matches, x)
    saved = optimizer.state_dict()
    names = [n for n, _ in model.named_parameters()]
    with pytest.raises(fprune.PruneError, match=r"does not name its parameters; pass the optimizer itself, or param_fqns"):
        fprune.prune_optimizer_state(saved, model, masks, matches)
    with pytest.raises(fprune.PruneError, match=r"param_fqns names 9 parameters, but the optimizer state dict has parameter index 9; give one FQN per parameter index"):
        fprune.prune_optimizer_state(saved, model, masks, matches, param_fqns=names[:-1])
    with pytest.raises(fprune.PruneError, match=r"param_fqns names 11 parameters, but the optimizer state dict has 10"):
        fprune.prune_optimizer_state(saved, model, masks, matches, param_fqns=[*names, "extra.weight"])
    with pytest.raises(fprune.PruneError, match=r"optimizer parameter 0 is named `conv9.weight`, which is not a parameter of the model; parameters with that name: conv1.weight"):
        fprune.prune_optimizer_state(saved, model, masks, matches, param_fqns=["conv9.weight", *names[1:]])
    with pytest.raises(fprune.PruneError, match=r"expects a torch.optim.Optimizer or its state_dict\(\)"):
        fprune.prune_optimizer_state({"state": {}}, model, masks, matches)


def test_a_state_tensor_of_another_shape_is_refused_for_a_pruned_parameter_only() -> None:
    model, x, masks, matches, _ = _convbn()
    optimizer = torch.optim.Adam(model.parameters())
    _masked_step(model, optimizer, masks, matches, x)
    saved = optimizer.state_dict()
    names = [n for n, _ in model.named_parameters()]
    saved["state"][names.index("conv2.weight")]["factor"] = torch.ones(3)
    with pytest.raises(fprune.PruneError, match=r"optimizer state `factor` of `conv2.weight` has shape \(3,\), neither the parameter's shape \(12, 8, 3, 3\) nor a scalar.*reset it after pruning"):
        fprune.prune_optimizer_state(saved, model, masks, matches, param_fqns=names)
    del saved["state"][names.index("conv2.weight")]["factor"]
    saved["state"][names.index("head.bias")]["factor"] = torch.ones(3)  # head.bias is not pruned: copied
    state = fprune.prune_optimizer_state(saved, model, masks, matches, param_fqns=names)
    per_param = state["state"]
    assert isinstance(per_param, dict) and torch.equal(per_param[names.index("head.bias")]["factor"], torch.ones(3))


def test_tied_parameters_that_pruning_would_separate_are_refused() -> None:
    model = TiedLinear()
    matches = fprune.match_patterns(torch.fx.symbolic_trace(model), fprune.default_patterns())
    optimizer = torch.optim.Adam(model.parameters())
    masks = {"fc1.weight": torch.tensor([True, False] * 3)}  # cuts fc2.weight's columns, tied to fc3.weight
    with pytest.raises(fprune.PruneError) as error:
        fprune.prune_optimizer_state(optimizer, model, masks, matches)
    # refused here (or by apply_prune itself, which must not separate them either)
    assert "fc2.weight" in str(error.value) and "fc3.weight" in str(error.value)


def test_groups_read_the_kept_entries_off_the_groups_without_index_coded_copies(monkeypatch: pytest.MonkeyPatch) -> None:
    """With channel groups the state is cut by the groups' own kept indices: no float64 copy
    of the model is made (the pattern path's cost), and the step still matches."""
    from fprune import _optim

    def refuse(model: nn.Module, coded: bool) -> nn.Module:
        raise AssertionError("an index-coded copy of the model was built")

    monkeypatch.setattr(_optim, "_coded", refuse)
    model, x, masks, groups, kept = _grouped("llama")
    optimizer = OPTIMIZERS["adam-amsgrad"](model.parameters())
    _masked_step(model, optimizer, masks, groups, x)
    pruned = fprune.apply_prune(model, masks, groups)
    pruned_optimizer = OPTIMIZERS["adam-amsgrad"](pruned.parameters())
    pruned_optimizer.load_state_dict(fprune.prune_optimizer_state(optimizer, model, masks, groups))
    rescaled = frozenset(r.weight for g in groups for r in g.rescales)  # RMSNorm weights * sqrt(size / kept): not step-exact
    assert _step_mismatches(model, optimizer, pruned, pruned_optimizer, masks, groups, kept, x, skip=rescaled) == []
    matches = fprune.match_patterns(torch.fx.symbolic_trace(model), fprune.default_patterns())
    with pytest.raises(AssertionError, match="index-coded copy"):  # the pattern path still needs them
        fprune.prune_optimizer_state(optimizer, model, {}, matches)
