"""load_pruned: the pruned architecture rebuilt from a plan with its parameters on the meta
device, pruned weights loaded from safetensors / a weights_only state_dict file / a mapping,
bit for bit; refusals that name the tensor."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file, save_model
from torch import Tensor, nn

import fprune
from fprune.plan import Plan, load_pruned, make_plan


class Net(nn.Module):
    """A CNN with a BatchNorm (buffers), a sigmoid (a bias fold) and a head tied to nothing."""

    def __init__(self, width: int = 16) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(3, width, 3)
        self.bn = nn.BatchNorm2d(width)
        self.c2 = nn.Conv2d(width, 8, 3)
        self.fc = nn.Linear(8, 4)

    def forward(self, x: Tensor) -> Tensor:
        x = torch.sigmoid(self.bn(self.c1(x)))
        out: Tensor = self.fc(self.c2(x).relu().mean((2, 3)))
        return out


class Tied(nn.Module):
    """An embedding tied to the output layer, through a hidden layer."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(10, 8)
        self.up = nn.Linear(8, 16)
        self.down = nn.Linear(16, 8)
        self.head = nn.Linear(8, 10, bias=False)
        self.head.weight = self.embed.weight

    def forward(self, ids: Tensor) -> Tensor:
        out: Tensor = self.head(self.down(self.up(self.embed(ids)).relu()))
        return out


def _net() -> Net:
    torch.manual_seed(1)
    model = Net().double().eval()
    assert model.bn.running_mean is not None and model.bn.running_var is not None
    with torch.no_grad():
        model.bn.running_mean.uniform_(-1, 1)
        model.bn.running_var.uniform_(0.5, 2)
    return model


def _pruned(model: nn.Module, level: float = 0.5) -> tuple[nn.Module, Plan]:
    groups = fprune.channel_groups(torch.fx.symbolic_trace(model))
    masks = fprune.group_masks(model, groups, level)
    return fprune.apply_prune(model, masks, groups), make_plan(model, masks, groups)


def _same(a: nn.Module, b: nn.Module) -> None:
    x, y = a.state_dict(keep_vars=True), b.state_dict(keep_vars=True)
    assert x.keys() == y.keys()
    for key in x:
        assert x[key].dtype == y[key].dtype and x[key].shape == y[key].shape, key
        assert torch.equal(x[key], y[key]), key
        assert x[key].requires_grad == y[key].requires_grad, key
        assert isinstance(x[key], nn.Parameter) == isinstance(y[key], nn.Parameter), key
    assert type(a) is type(b) and a.training == b.training


def _factory() -> Net:
    return Net().double().eval()


@pytest.mark.parametrize("kind", ["safetensors", "torch", "mapping", "folder"])
def test_round_trip_is_bit_identical(tmp_path: Path, kind: str) -> None:
    model = _net()
    pruned, plan = _pruned(model)
    if kind == "safetensors":
        weights: str | Path | dict[str, Tensor] = tmp_path / "pruned.safetensors"
        save_model(pruned, str(weights))
    elif kind == "torch":
        weights = tmp_path / "pruned.pt"
        torch.save(pruned.state_dict(), weights)
    elif kind == "folder":
        state = pruned.state_dict()
        names = list(state)
        save_file({k: state[k].contiguous() for k in names[:4]}, str(tmp_path / "a.safetensors"))
        save_file({k: state[k].contiguous() for k in names[4:]}, str(tmp_path / "b.safetensors"))
        weights = tmp_path
    else:
        weights = dict(pruned.state_dict())
    loaded = load_pruned(_factory, Plan.from_json(plan.to_json()), weights)
    _same(pruned, loaded)
    x = torch.randn(2, 3, 10, 10, dtype=torch.float64)
    assert torch.equal(pruned(x), loaded(x))
    assert loaded.c1.out_channels == pruned.c1.out_channels == 8  # type: ignore[union-attr]


def test_the_factory_allocates_no_original_weight(tmp_path: Path) -> None:
    model = _net()
    pruned, plan = _pruned(model)
    save_model(pruned, str(tmp_path / "p.safetensors"))
    built: list[nn.Module] = []

    def factory() -> Net:
        net = _factory()
        built.append(net)
        return net

    loaded = load_pruned(factory, plan, tmp_path / "p.safetensors")
    assert all(p.is_meta for p in built[0].parameters())
    assert not any(b.is_meta for b in built[0].buffers())  # buffers are built for real
    assert not any(t.is_meta for t in loaded.state_dict().values())
    assert all(not p.is_meta for p in nn.Linear(2, 2).parameters())  # the patch is undone


def test_a_model_instead_of_a_factory() -> None:
    model = _net()
    pruned, plan = _pruned(model)
    with torch.device("meta"):
        skeleton = _factory()
    _same(pruned, load_pruned(skeleton, plan, pruned.state_dict()))


def test_tied_weights_stay_tied(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = Tied().double()
    traced = torch.fx.symbolic_trace(model)
    groups = fprune.channel_groups(traced)
    masks = fprune.group_masks(model, groups, 0.5, ignore=())
    pruned = fprune.apply_prune(model, masks, groups)
    plan = make_plan(model, masks, groups)
    for kind in ("safetensors", "torch"):
        path = tmp_path / f"tied.{kind}"
        if kind == "safetensors":
            save_model(pruned, str(path))  # writes the tied tensor once
        else:
            torch.save(pruned.state_dict(), path)
        loaded = load_pruned(lambda: Tied().double(), plan, path)
        assert isinstance(loaded, Tied)
        assert loaded.head.weight is loaded.embed.weight
        _same(pruned, loaded)


def test_refuses_weights_of_another_model(tmp_path: Path) -> None:
    model = _net()
    pruned, plan = _pruned(model)
    with pytest.raises(fprune.PruneError, match=r"^load_pruned: `c1\.weight` is \[16, 3, 3, 3\] in the weights, \[8, 3, 3, 3\]"):
        load_pruned(_factory, plan, model.state_dict())
    state = dict(pruned.state_dict())
    del state["fc.bias"]
    with pytest.raises(fprune.PruneError, match=r"^load_pruned: the weights lack `fc\.bias`"):
        load_pruned(_factory, plan, state)
    state = {**pruned.state_dict(), "extra.weight": torch.zeros(1)}
    with pytest.raises(fprune.PruneError, match=r"^load_pruned: the weights hold `extra\.weight`"):
        load_pruned(_factory, plan, state)
    with pytest.raises(fprune.PruneError, match=r"^load_pruned: the plan was made for a .*Net, not a .*Tied"):
        load_pruned(Tied, plan, pruned.state_dict())
    with pytest.raises(fprune.PruneError, match=r"^load_pruned: `c1\.weight` has shape \[32, 3, 3, 3\] here"):
        load_pruned(lambda: Net(32).double(), plan, pruned.state_dict())
    with pytest.raises(fprune.PruneError, match=r"^load_pruned: no file or folder"):
        load_pruned(_factory, plan, tmp_path / "missing.safetensors")


def test_refuses_a_pickled_module(tmp_path: Path) -> None:
    model = _net()
    pruned, plan = _pruned(model)
    torch.save(pruned, tmp_path / "module.pt")  # a whole module: only unpickling runs it
    with pytest.raises(fprune.PruneError, match=r"^load_pruned: cannot read .* weights_only=True"):
        load_pruned(_factory, plan, tmp_path / "module.pt")


def test_a_meta_model_cannot_make_unsaved_buffers() -> None:
    class WithBuffer(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Linear(4, 8)
            self.b = nn.Linear(8, 2)
            self.register_buffer("scale", torch.ones(2), persistent=False)

        def forward(self, x: Tensor) -> Tensor:
            out: Tensor = self.b(self.a(x).relu()) * self.scale
            return out

    model = WithBuffer()
    pruned, plan = _pruned(model)
    with torch.device("meta"):
        skeleton = WithBuffer()
    with pytest.raises(fprune.PruneError, match=r"^load_pruned: `scale` is still on the meta device.*pass a function"):
        load_pruned(skeleton, plan, pruned.state_dict())
    loaded = load_pruned(WithBuffer, plan, pruned.state_dict())
    assert torch.equal(loaded.scale, torch.ones(2))  # type: ignore[arg-type]


def _pruned_hf(build: Callable[[], nn.Module]) -> tuple[nn.Module, Plan]:
    """A Hugging Face decoder `build` makes, pruned at 0.5 through its exported graph, and the plan."""
    torch.manual_seed(0)
    model = build()
    ids = torch.randint(0, 64, (1, 8))
    groups = fprune.channel_groups(torch.export.export(model, (ids,), {"use_cache": False}, strict=False))
    masks = fprune.group_masks(model, groups, 0.5)
    return fprune.apply_prune(model, masks, groups), make_plan(model, masks, groups)


def test_hugging_face_llama_bf16(tmp_path: Path) -> None:
    transformers = pytest.importorskip("transformers")
    config = transformers.LlamaConfig(
        vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=8, tie_word_embeddings=True,
    )  # fmt: skip

    def build() -> nn.Module:
        return transformers.LlamaForCausalLM(config).to(torch.bfloat16).eval()  # type: ignore[no-any-return]

    pruned, plan = _pruned_hf(build)
    expected = pruned.config.to_dict()  # type: ignore[union-attr,operator]
    fprune.hf.save_pretrained(pruned, tmp_path / "pruned")  # sets the config's `architectures` and `dtype`
    loaded = load_pruned(build, Plan.from_json(plan.to_json()), tmp_path / "pruned")
    assert loaded.lm_head.weight is loaded.model.embed_tokens.weight  # type: ignore[union-attr]
    _same(pruned, loaded)
    assert loaded.config.to_dict() == expected  # type: ignore[union-attr,operator]
    x = torch.randint(0, 64, (2, 8))
    assert torch.equal(pruned(x).logits, loaded(x).logits)


def test_hugging_face_gemma_computes_the_buffers_no_checkpoint_holds(tmp_path: Path) -> None:
    """Gemma's `embed_scale` is a non-persistent buffer the hidden-size pruning sets (a `Full` op):
    load_pruned builds it for real and runs the plan's op on it (and no op on a meta tensor)."""
    transformers = pytest.importorskip("transformers")
    config = transformers.GemmaConfig(
        vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=8,
    )  # fmt: skip

    def build() -> nn.Module:
        return transformers.GemmaForCausalLM(config).eval()  # type: ignore[no-any-return]

    pruned, plan = _pruned_hf(build)
    assert plan.tensors["model.embed_tokens.embed_scale"] == (fprune.plan.Full(4.0),)  # sqrt(16): the new hidden size
    save_model(pruned, str(tmp_path / "gemma.safetensors"))
    loaded = load_pruned(build, plan, tmp_path / "gemma.safetensors")
    _same(pruned, loaded)
    x = torch.randint(0, 64, (2, 8))
    assert torch.equal(pruned(x).logits, loaded(x).logits)


def test_random_fills_of_meta_tensors_are_skipped_only_inside() -> None:
    from fprune.plan._load import parameters_on_meta

    with parameters_on_meta():
        layer = nn.Linear(3, 4)
        buffer = torch.zeros(3).normal_()  # a real tensor is filled as ever
    assert layer.weight.is_meta and not bool((buffer == 0).all())
    assert torch.empty(2, device="meta").normal_().is_meta  # outside: torch's own meta kernel runs
