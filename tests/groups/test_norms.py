"""Norms over the channels: RMSNorm is exact (weight and eps rescaled in the pruned copy);
LayerNorm / GroupNorm block, or with ``norms="renormalize"`` are pruned with statistics over the
kept channels, and the groups say they are not output-exact."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

import fprune
from fprune.groups import ChannelGroup
from fprune.groups._records import NormMode

from ..exact import prune_exactly
from ..purity import assert_unchanged, snapshot
from ..zoo_llama import FORMS, LlamaDecoder, RMSNorm, RMSNormForm, llama

EPS_OF_THE_MODULE = 1e-6


def _hidden(groups: tuple[ChannelGroup, ...]) -> ChannelGroup:
    return next(g for g in groups if "embed_tokens.weight" in g.producers)


def _norms(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(name, m) for name, m in model.named_modules() if isinstance(m, (RMSNorm, nn.RMSNorm))]


def _eps(norm: nn.Module) -> float | None:
    value = getattr(norm, "variance_epsilon", None) if hasattr(norm, "variance_epsilon") else getattr(norm, "eps")
    assert value is None or isinstance(value, float)
    return value


def _kept_positions(group: ChannelGroup, masks: dict[str, Tensor], fqn: str) -> Tensor:
    """The positions of tensor `fqn` (a member of `group`, dim 0) that the masks keep."""
    producer = group.producers[0]
    member = next(m for m in group.members if m.fqn == producer and m.role == "producer")
    keep = torch.zeros(group.size, dtype=torch.bool)
    keep[list(member.channels)] = masks[producer][list(member.positions)]
    target = next(m for m in group.members if m.fqn == fqn)
    kept = torch.zeros(max(target.positions) + 1, dtype=torch.bool)
    kept[list(target.positions)] = keep[list(target.channels)]
    return kept


# --- RMSNorm: exact ------------------------------------------------------------------------------


@pytest.mark.parametrize("level", [0.3, 0.5])
@pytest.mark.parametrize("form", [f for f in FORMS if f != "float"])
def test_the_hidden_size_of_a_llama_is_pruned_exactly_through_its_rmsnorms(form: RMSNormForm, level: float) -> None:
    model, ids = llama(form, compute_dtype=torch.float64)
    before = snapshot(model)
    pruned, groups = prune_exactly(model, ids, level)
    assert_unchanged(model, before)
    hidden = _hidden(groups)
    assert hidden.prunable and hidden.exact and not hidden.reaches_output
    assert len(hidden.rescales) == 5  # two per block and the final norm
    assert isinstance(pruned, LlamaDecoder)
    dim = pruned.embed_tokens.embedding_dim
    assert dim == max(1, math.floor((1 - level) * 32)) or dim < 32
    q_proj = pruned.get_submodule("layers.0.self_attn.q_proj")
    assert pruned.lm_head.in_features == dim and isinstance(q_proj, nn.Linear) and q_proj.in_features == dim
    if isinstance(pruned.norm, nn.RMSNorm):
        assert pruned.norm.normalized_shape == (dim,)


@pytest.mark.parametrize("form", FORMS)
def test_the_pruned_rmsnorm_weight_and_eps_are_rescaled(form: RMSNormForm) -> None:
    model, ids = llama(form)
    groups = fprune.channel_groups(torch.fx.symbolic_trace(model), example_inputs=(ids,))
    masks = fprune.group_masks(model, groups, 0.5)
    pruned = fprune.apply_prune(model, masks, groups)
    hidden = _hidden(groups)
    for (name, norm), (_, new) in zip(_norms(model), _norms(pruned)):
        kept = _kept_positions(hidden, masks, f"{name}.weight")
        assert int(kept.sum()) == 16
        old_weight, new_weight = norm.get_parameter("weight"), new.get_parameter("weight")
        torch.testing.assert_close(new_weight, old_weight[kept] * math.sqrt(2.0))
        eps = _eps(norm)
        assert _eps(new) == pytest.approx((torch.finfo(torch.float32).eps if eps is None else eps) * 2.0)
        assert _eps(norm) == (None if form == "module_default_eps" else EPS_OF_THE_MODULE)  # the original is untouched


def test_rmsnorm_in_float32_casts_matches_the_masked_model() -> None:
    """``x.float()`` computes in float32 whatever the model's dtype: compared at float32 precision,
    against the masked model; without the rescale the outputs are far apart."""
    model, ids = llama("float")
    groups = fprune.channel_groups(torch.fx.symbolic_trace(model), example_inputs=(ids,))
    assert len(_hidden(groups).rescales) == 5
    masks = fprune.group_masks(model, groups, 0.3)
    pruned = fprune.apply_prune(model, masks, groups)
    with torch.no_grad():
        expected = functional_call(model, fprune.masked_parameters(model, masks, groups), (ids,))
        torch.testing.assert_close(pruned(ids), expected, rtol=1e-4, atol=1e-5)
        unscaled = copy.deepcopy(pruned)
        for (_, new), (name, norm) in zip(_norms(unscaled), _norms(model)):
            assert isinstance(new, RMSNorm)
            new.weight.copy_(norm.get_parameter("weight")[_kept_positions(_hidden(groups), masks, f"{name}.weight")])
            new.eps = EPS_OF_THE_MODULE
        assert not torch.allclose(unscaled(ids), expected, rtol=1e-3, atol=1e-3)


def test_prune_channels_reaches_the_hidden_size_and_the_records_say_how() -> None:
    model, ids = llama("hf")
    pruned = fprune.prune_channels(model, 0.3, example_inputs=(ids,))
    assert isinstance(pruned, LlamaDecoder) and pruned.embed_tokens.embedding_dim == 22
    groups = fprune.channel_groups(torch.fx.symbolic_trace(model), example_inputs=(ids,))
    text = fprune.explain(groups)
    assert "RMSNorm at `mean` stays exact" in text and "sqrt(32 / kept)" in text
    assert "NOT output-exact" not in text


def test_a_traced_graph_module_gets_its_eps_rewritten_in_the_graph() -> None:
    model, ids = llama("plain")
    model = model.double()
    gm = torch.fx.symbolic_trace(model)
    groups = fprune.channel_groups(gm, example_inputs=(ids,))
    masks = fprune.group_masks(gm, groups, 0.5)
    pruned = fprune.apply_prune(gm, masks, groups)
    assert isinstance(pruned, torch.fx.GraphModule) and "2e-06" in pruned.code and "1e-06" in gm.code
    with torch.no_grad():
        expected = functional_call(gm, fprune.masked_parameters(gm, masks, groups), (ids,))
        torch.testing.assert_close(pruned(ids), expected, rtol=1e-9, atol=1e-10)


class _Norm(nn.Module):
    """RMSNorm-like modules that are not (all exactly) RMSNorms fprune can rescale."""

    def __init__(self, kind: str, dim: int = 16) -> None:
        super().__init__()
        self.kind = kind
        self.eps = 1e-5
        self.weight = nn.Parameter(torch.rand(dim) + 0.5)

    def forward(self, x: Tensor) -> Tensor:
        if self.kind == "centered":  # a mean over the channels that is not an RMSNorm
            return (x - x.mean(-1, keepdim=True)) * self.weight
        if self.kind == "no_weight":
            return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        if self.kind == "weight_twice":
            return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight + self.weight
        if self.kind == "sum":
            return x * torch.rsqrt(x.pow(2).sum(-1, keepdim=True) + self.eps) * self.weight
        if self.kind == "cube":
            return x * torch.rsqrt(x.pow(3).mean(-1, keepdim=True) + self.eps) * self.weight
        if self.kind == "global_eps":
            return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + EPS_OF_THE_MODULE) * self.weight
        if self.kind == "two_attributes":
            self.other = self.eps
            return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight
        raise AssertionError(self.kind)


class _NormNet(nn.Module):
    def __init__(self, norm: nn.Module) -> None:
        super().__init__()
        self.fc1 = nn.Linear(8, 16)
        self.norm = norm
        self.fc2 = nn.Linear(16, 4)

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.fc2(self.norm(self.fc1(x)))
        return out


def _groups(model: nn.Module, x: Tensor, norms: NormMode = "block") -> tuple[ChannelGroup, ...]:
    return fprune.channel_groups(torch.fx.symbolic_trace(model), example_inputs=(x,), norms=norms)


@pytest.mark.parametrize(
    ("kind", "reason"),
    [
        ("centered", "a reduction over the channel dim"),
        ("no_weight", 'is not multiplied by a weight of the model, which would carry the rescale; norms="renormalize"'),
        ("weight_twice", "is used elsewhere too"),
        ("sum", "a reduction over the channel dim"),
        ("cube", "a reduction over the channel dim"),
    ],
)
def test_a_mean_over_channels_that_is_not_a_rescalable_rmsnorm_still_blocks(kind: str, reason: str) -> None:
    torch.manual_seed(0)
    model, x = _NormNet(_Norm(kind)), torch.randn(3, 8)
    fc1 = next(g for g in _groups(model, x) if "fc1.weight" in g.producers)
    assert not fc1.prunable and not fc1.rescales
    assert any(reason in b.reason for b in fc1.blockers), fc1.blockers


def test_an_eps_not_held_by_one_module_attribute_is_refused() -> None:
    torch.manual_seed(0)
    x = torch.randn(3, 8)
    for kind in ("global_eps", "two_attributes"):
        model = _NormNet(_Norm(kind))
        model(x)  # sets `other` on the two_attributes norm
        # prune_channels knows the model: the group is blocked when found
        with pytest.raises(fprune.PruneError, match=r"prune_channels: nothing to prune.*cannot be traced to exactly one"):
            fprune.prune_channels(model, 0.5, example_inputs=(x,))
        # from a graph alone, apply_prune finds out and refuses
        groups = _groups(model, x)
        fc1 = next(g for g in groups if "fc1.weight" in g.producers)
        assert fc1.prunable and fc1.rescales
        masks = fprune.group_masks(model, groups, 0.5)
        with pytest.raises(fprune.PruneError, match=r"apply_prune: the RMSNorm at `mean` adds eps=1e-0[56].*cannot be traced to exactly one"):
            fprune.apply_prune(model, masks, groups)
        # a norm that keeps all its channels keeps its eps as it is: pruning other groups works
        others = fprune.group_masks(model, groups, 0.5, ignore=["fc1.weight"])
        assert list(others) == ["fc2.weight"] and fprune.apply_prune(model, others, groups).fc2.out_features == 2


def test_an_rmsnorm_module_without_weight_blocks() -> None:
    model, x = _NormNet(nn.RMSNorm(16, elementwise_affine=False)), torch.randn(3, 8)
    modes: tuple[NormMode, ...] = ("block", "renormalize")
    for norms in modes:
        fc1 = next(g for g in _groups(model, x, norms) if "fc1.weight" in g.producers)
        assert not fc1.prunable and "has no weight (elementwise_affine=False)" in fc1.blockers[0].reason


def test_renormalize_prunes_an_rmsnorm_without_weight_inexactly() -> None:
    torch.manual_seed(0)
    model, x = _NormNet(_Norm("no_weight")), torch.randn(3, 8)
    fc1 = next(g for g in _groups(model, x, "renormalize") if "fc1.weight" in g.producers)
    assert fc1.prunable and not fc1.exact and not fc1.rescales
    assert "computes its statistics over the kept channels only" in fc1.inexact[0].reason


# --- LayerNorm / GroupNorm: norms="renormalize" ------------------------------------------------


class LayerNorm2d(nn.LayerNorm):
    """Channels-first LayerNorm, as timm writes it: permute, F.layer_norm, permute."""

    def forward(self, x: Tensor) -> Tensor:
        x = F.layer_norm(x.permute(0, 2, 3, 1), self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


class Transformerish(nn.Module):
    """fc_in -> residual stream through LayerNorms -> head."""

    def __init__(self) -> None:
        super().__init__()
        self.fc_in = nn.Linear(8, 16)
        self.ln1 = nn.LayerNorm(16)
        self.fc1 = nn.Linear(16, 24)
        self.fc2 = nn.Linear(24, 16)
        self.ln2 = nn.LayerNorm(16)
        self.head = nn.Linear(16, 4)

    def forward(self, x: Tensor) -> Tensor:
        h = self.fc_in(x)
        h = h + self.fc2(F.relu(self.fc1(self.ln1(h))))
        out: Tensor = self.head(self.ln2(h))
        return out


class GroupNormNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, padding=1)
        self.gn = nn.GroupNorm(4, 16)
        self.conv2 = nn.Conv2d(16, 8, 3, padding=1)
        self.ln = LayerNorm2d(8)
        self.conv3 = nn.Conv2d(8, 6, 1)

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.conv3(self.ln(self.conv2(F.relu(self.gn(self.conv1(x))))))
        return out


def _randomize(model: nn.Module) -> nn.Module:
    torch.manual_seed(1)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (nn.LayerNorm, nn.GroupNorm)):
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.5, 0.5)
    return model.double().eval()


class _KeptOnly(nn.Module):
    """The reference for a renormalized norm, written independently of apply: the norm run on
    the kept channels alone (a copy resized by hand), zeros in the removed ones."""

    def __init__(self, norm: nn.Module, kept: Tensor, dim: int) -> None:
        super().__init__()
        self.index = kept.nonzero().squeeze(1)
        self.dim = dim
        self.norm = copy.deepcopy(norm)
        k = int(self.index.numel())
        with torch.no_grad():
            self.norm.weight = nn.Parameter(norm.get_parameter("weight")[self.index])
            self.norm.bias = nn.Parameter(norm.get_parameter("bias")[self.index])
        if isinstance(self.norm, nn.GroupNorm):
            self.norm.num_channels = k
        else:
            assert isinstance(self.norm, nn.LayerNorm)
            self.norm.normalized_shape = (k,)

    def forward(self, x: Tensor) -> Tensor:
        out = torch.zeros_like(x)
        return out.index_copy(self.dim, self.index, self.norm(x.index_select(self.dim, self.index)))


def _renormalized_reference(model: nn.Module, groups: tuple[ChannelGroup, ...], masks: dict[str, Tensor]) -> nn.Module:
    reference = copy.deepcopy(model)
    with torch.no_grad():
        for name, value in fprune.masked_parameters(model, masks, groups).items():
            reference.get_parameter(name).copy_(value)
    for name, module in list(model.named_modules()):
        if isinstance(module, (nn.LayerNorm, nn.GroupNorm)):
            group = next(g for g in groups if any(m.fqn == f"{name}.weight" for m in g.members))
            kept = _kept_positions(group, masks, f"{name}.weight")
            dim = -1 if type(module) is nn.LayerNorm else 1
            setattr(reference, name, _KeptOnly(module, kept, dim))
    return reference


def test_default_mode_blocks_layernorm_with_a_reason_that_names_the_option() -> None:
    model, x = _randomize(Transformerish()), torch.randn(3, 8, dtype=torch.float64)
    stream = next(g for g in _groups(model, x) if "fc_in.weight" in g.producers)
    assert not stream.prunable and stream.exact
    assert any('norms="renormalize"' in b.reason and "normalizes across the channels" in b.reason for b in stream.blockers)
    with pytest.raises(fprune.PruneError, match=r'norms="renormalize"'):
        fprune.prune_channels(model, 0.5, example_inputs=(x,), ignore=["fc1.bias", "head.bias"])
    gn_model, image = _randomize(GroupNormNet()), torch.randn(2, 3, 8, 8, dtype=torch.float64)
    for producer, node in (("conv1.weight", "gn"), ("conv2.weight", "layer_norm")):
        group = next(g for g in _groups(gn_model, image) if producer in g.producers)
        assert not group.prunable and group.blockers[0].node == node and 'norms="renormalize"' in group.blockers[0].reason


@pytest.mark.parametrize("level", [0.3, 0.5])
def test_renormalize_prunes_a_layernorm_stream_as_documented(level: float) -> None:
    model, x = _randomize(Transformerish()), torch.randn(3, 8, dtype=torch.float64)
    before = snapshot(model)
    groups = _groups(model, x, "renormalize")
    stream = next(g for g in groups if "fc_in.weight" in g.producers)
    assert stream.prunable and not stream.exact and [i.node for i in stream.inexact] == ["ln1", "ln2"]
    assert {("ln1.weight", "carrier"), ("ln1.bias", "carrier"), ("ln2.bias", "carrier")} <= {(m.fqn, m.role) for m in stream.members}
    text = fprune.explain(groups)
    assert 'NOT output-exact (norms="renormalize")' in str(stream) and "NOT output-exact at `ln1`" in text
    assert text.startswith('3 channel groups, 3 prunable (1 of them NOT output-exact: norms="renormalize"')
    masks = fprune.group_masks(model, groups, level, ignore=["fc1.bias", "head.bias"])
    pruned = fprune.apply_prune(model, masks, groups)
    assert_unchanged(model, before)
    fc_in = pruned.get_submodule("fc_in")
    assert isinstance(fc_in, nn.Linear)
    kept = fc_in.out_features
    assert kept < 16 and pruned.get_submodule("ln1").normalized_shape == (kept,)
    reference = _renormalized_reference(model, groups, masks)
    with torch.no_grad():
        torch.testing.assert_close(pruned(x), reference(x), rtol=1e-9, atol=1e-10)
        masked = functional_call(model, fprune.masked_parameters(model, masks, groups), (x,))
        assert not torch.allclose(pruned(x), masked)  # not output-exact, as the records say


def test_renormalize_prunes_groupnorm_by_in_group_position_and_layernorm2d() -> None:
    model, image = _randomize(GroupNormNet()), torch.randn(2, 3, 8, 8, dtype=torch.float64)
    groups = _groups(model, image, "renormalize")
    conv1 = next(g for g in groups if "conv1.weight" in g.producers)
    conv2 = next(g for g in groups if "conv2.weight" in g.producers)
    assert conv1.prunable and conv2.prunable and not conv1.exact and not conv2.exact
    assert len(conv1.units) == 4 and all(len(u) == 4 for u in conv1.units)  # position j of the 4 groups
    assert [i.node for i in conv2.inexact] == ["layer_norm"]
    masks = fprune.group_masks(model, groups, 0.5)
    pruned = fprune.apply_prune(model, masks, groups)
    gn, ln = pruned.get_submodule("gn"), pruned.get_submodule("ln")
    assert isinstance(gn, nn.GroupNorm) and (gn.num_groups, gn.num_channels) == (4, 8)
    assert isinstance(ln, LayerNorm2d) and ln.normalized_shape == (4,)
    reference = _renormalized_reference(model, groups, masks)
    with torch.no_grad():
        torch.testing.assert_close(pruned(image), reference(image), rtol=1e-9, atol=1e-10)
    # a traced GraphModule: F.layer_norm's normalized_shape is a number in its graph, rewritten
    gm = torch.fx.symbolic_trace(model)
    gm_groups = fprune.channel_groups(gm, example_inputs=(image,), norms="renormalize")
    pruned_gm = fprune.apply_prune(gm, fprune.group_masks(gm, gm_groups, 0.5), gm_groups)
    with torch.no_grad():
        torch.testing.assert_close(pruned_gm(image), reference(image), rtol=1e-9, atol=1e-10)


def test_prune_channels_with_renormalize() -> None:
    model, x = _randomize(Transformerish()), torch.randn(3, 8, dtype=torch.float64)
    pruned = fprune.prune_channels(model, 0.5, example_inputs=(x,), norms="renormalize")
    assert pruned.get_submodule("ln2").normalized_shape == (8,)
    with pytest.raises(fprune.PruneError, match=r"prune_channels: `norms` must be 'block' or 'renormalize', got 'keep'"):
        fprune.prune_channels(model, 0.5, norms="keep")  # type: ignore[arg-type]
    with pytest.raises(fprune.PruneError, match=r"channel_groups: `norms` must be"):
        fprune.channel_groups(torch.fx.symbolic_trace(model), norms="exact")  # type: ignore[arg-type]


def test_groupnorm_with_one_channel_per_group_is_exact_and_layer_norm_outside_a_layernorm_blocks() -> None:
    class Odd(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 1)
            self.gn = nn.GroupNorm(8, 8)
            self.fc = nn.Linear(8, 8)
            self.w = nn.Parameter(torch.ones(8))
            self.out = nn.Linear(8, 2)

        def forward(self, x: Tensor) -> Tensor:
            h = self.fc(self.gn(self.conv(x)).mean((2, 3)))
            result: Tensor = self.out(F.layer_norm(h, (8,), self.w))
            return result

    model, x = Odd(), torch.randn(2, 3, 4, 4)
    groups = _groups(model, x, "renormalize")
    conv = next(g for g in groups if "conv.weight" in g.producers)
    fc = next(g for g in groups if "fc.weight" in g.producers)
    assert conv.prunable and conv.exact  # per-channel statistics (tests/groups/test_per_channel_norms.py)
    assert not fc.prunable and "is not in a subclass of nn.LayerNorm" in fc.blockers[0].reason
