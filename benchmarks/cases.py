"""The benchmark cases (models and inputs) and the pruning pipelines of the three libraries.

A pipeline runs one library's pruning steps on a model and returns the pruned model. Each step
runs inside ``probe.step(name)``, so the same code is timed (timing.py) and measured for peak
memory (memory.py). Torch-Pruning and torch.ao prune in place: callers hand them a copy.
"""

from __future__ import annotations

import importlib
import warnings
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from torch import Tensor, fx, nn
from torch.nn import functional as F

import fprune
from fprune._demo import ReferenceMLP
from tests.zoo import LlamaStyleDecoder, MobileNetV2Style, ResNet50Style, ViTStyle, _init_bn

LEVEL = 0.5
MOBILENETV2_CONFIG = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))


class Probe(Protocol):
    """Brackets each pruning step; timing and memory probes record what happens inside."""

    def step(self, name: str) -> AbstractContextManager[None]: ...


class NullProbe:
    """Records nothing (for building pruned models outside measurements)."""

    @contextmanager
    def step(self, name: str) -> Iterator[None]:
        yield


# --------------------------------------------------------------------------- models


class DeepMLP(nn.Module):
    """`depth` blocks of Linear(width, width) + ReLU, then Linear(width, 10)."""

    def __init__(self, depth: int, width: int = 1024, classes: int = 10) -> None:
        super().__init__()
        blocks: list[nn.Module] = []
        for _ in range(depth):
            blocks += [nn.Linear(width, width), nn.ReLU()]
        self.layers = nn.Sequential(*blocks)
        self.head = nn.Linear(width, classes)

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.head(self.layers(x))
        return out


class ResNet50ImageNetStem(ResNet50Style):
    """The zoo's ResNet50Style with torchvision's ImageNet stem (conv7x7/2-BN-ReLU, maxpool3x3/2)
    instead of its CIFAR stem (conv3x3/1, no pool): at 224x224 it costs ResNet-50's ~8 GFLOPs
    per image instead of ~127."""

    def __init__(self, num_classes: int, width: int, depths: tuple[int, int, int, int]) -> None:
        super().__init__(num_classes, width, depths)
        self.conv1 = nn.Conv2d(3, width, 7, stride=2, padding=3, bias=False)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        x = self.maxpool(F.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        out: Tensor = self.fc(torch.flatten(self.avgpool(x), 1))
        return out


# --------------------------------------------------------------------------- cases


@dataclass(frozen=True)
class Case:
    """One model to prune at `LEVEL`.

    Attributes:
        name: the key for ``--only``.
        title: what the tables show.
        kind: "mlp", "cnn", "vit" or "llm" (which libraries and targets apply).
        build: returns the model in eval mode, seeded.
        example: returns an input batch of the given size.
        classifier: the final classifier's module FQN (ignored by Torch-Pruning).
        mask_fqns: producer weights the pattern pipelines (fprune, torch.ao) prune.
        group_ignore: fprune `group_masks(ignore=...)`; None skips the groups forward returns.
        groups_need_shapes: pass the example input to `channel_groups` (flatten / reshape).
        repeats: default timed repeats (after one warm-up run).
        latency: measure pruned-model latency.
        round_tos: fprune `round_to` values whose pruned models are timed too.
    """

    name: str
    title: str
    kind: str
    build: Callable[[], nn.Module]
    example: Callable[[int], Tensor]
    classifier: str
    mask_fqns: tuple[str, ...] = ()
    group_ignore: tuple[str, ...] | None = None
    groups_need_shapes: bool = True
    repeats: int = 5
    latency: bool = True
    round_tos: tuple[int, ...] = (1,)
    tp_options: Callable[[nn.Module], dict[str, object]] = field(default=lambda model: {})

    @property
    def libraries(self) -> tuple[str, ...]:
        if self.kind == "mlp":
            return ("fprune", "fprune-groups", "torch.ao", "torch-pruning")
        if self.kind == "llm":
            return ("fprune-groups",)
        return ("fprune-groups", "torch-pruning")


def _seeded(make: Callable[[], nn.Module]) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        torch.manual_seed(0)
        return _init_bn(make()).eval()

    return build


def _images(batch: int) -> Tensor:
    return torch.randn(batch, 3, 224, 224, generator=torch.Generator().manual_seed(1))


def _features(width: int) -> Callable[[int], Tensor]:
    return lambda batch: torch.randn(batch, width, generator=torch.Generator().manual_seed(1))


def _tokens(batch: int) -> Tensor:
    return torch.randint(0, 32000, (batch, 16), generator=torch.Generator().manual_seed(1))


def _mlp(depth: int, repeats: int, latency: bool) -> Case:
    return Case(
        name=f"mlp-{depth}",
        title=f"MLP {depth} x Linear(1024)+ReLU",
        kind="mlp",
        build=_seeded(lambda: DeepMLP(depth)),
        example=_features(1024),
        classifier="head",
        mask_fqns=tuple(f"layers.{2 * i}.weight" for i in range(depth)),
        groups_need_shapes=False,
        repeats=repeats,
        latency=latency,
    )


def _vit_heads(model: nn.Module) -> dict[str, object]:
    attention = {m: m.num_heads for m in model.modules() if isinstance(m, nn.MultiheadAttention)}
    return {"num_heads": attention, "prune_num_heads": True, "prune_head_dims": False, "head_pruning_ratio": LEVEL}


CASES: tuple[Case, ...] = (
    Case(
        name="mlp-seed",
        title="seed MLP 700-500-800-600-4",
        kind="mlp",
        build=_seeded(ReferenceMLP),
        example=_features(700),
        classifier="linear",
        mask_fqns=("seq.0.weight", "seq.2.weight", "seq.4.weight", "linear.weight"),
        group_ignore=(),
        groups_need_shapes=False,
        repeats=9,
    ),
    _mlp(8, repeats=5, latency=True),
    _mlp(32, repeats=5, latency=True),
    _mlp(128, repeats=3, latency=True),
    _mlp(512, repeats=3, latency=False),
    Case(
        name="resnet50",
        title="ResNet-50-style (zoo, CIFAR stem) 224x224",
        kind="cnn",
        build=_seeded(lambda: ResNet50Style(num_classes=1000, width=64, depths=(3, 4, 6, 3))),
        example=_images,
        classifier="fc",
        repeats=3,
        round_tos=(1, 8, 16),
    ),
    Case(
        name="resnet50-in",
        title="ResNet-50-style, ImageNet stem, 224x224",
        kind="cnn",
        build=_seeded(lambda: ResNet50ImageNetStem(num_classes=1000, width=64, depths=(3, 4, 6, 3))),
        example=_images,
        classifier="fc",
        repeats=3,
        round_tos=(1, 8, 16),
    ),
    Case(
        name="mobilenetv2",
        title="MobileNetV2-style (full config, width 1.0) 224x224",
        kind="cnn",
        build=_seeded(lambda: MobileNetV2Style(num_classes=1000, width_mult=1.0, config=MOBILENETV2_CONFIG)),
        example=_images,
        classifier="classifier.1",
        repeats=3,
        round_tos=(1, 8, 16),
    ),
    Case(
        name="vit-b16",
        title="ViT-B/16-style 224x224",
        kind="vit",
        build=_seeded(lambda: ViTStyle(image=224, patch=16, dim=768, depth=12, heads=12, mlp_ratio=4, num_classes=1000)),
        example=_images,
        classifier="head",
        repeats=3,
        tp_options=_vit_heads,
    ),
    Case(
        name="llama-1b",
        title="Llama-style 1.1B (TinyLlama shape), float32",
        kind="llm",
        build=_seeded(lambda: LlamaStyleDecoder(vocab=32000, dim=2048, depth=22, heads=32, kv_heads=4, hidden=5632)),
        example=_tokens,
        classifier="lm_head",
        repeats=3,
        latency=False,
    ),
)

QUICK = ("mlp-seed", "mlp-8", "mlp-32", "mobilenetv2")


def case_named(name: str) -> Case:
    for case in CASES:
        if case.name == name:
            return case
    raise SystemExit(f"unknown case `{name}`; known: {', '.join(c.name for c in CASES)}")


# --------------------------------------------------------------------------- pipelines


def prune_fprune_patterns(case: Case, model: nn.Module, example: Tensor, probe: Probe) -> nn.Module:
    """fprune's pattern pipeline: trace, match_patterns, saliency masks, apply_prune."""
    with probe.step("trace"):
        gm = fx.symbolic_trace(model)
    with probe.step("match"):
        matches = fprune.match_patterns(gm, fprune.default_patterns())
    with probe.step("masks"):
        weights = dict(model.named_parameters())
        masks = {fqn: fprune.saliency_mask(weights[fqn], LEVEL) for fqn in case.mask_fqns}
    with probe.step("apply"):
        return fprune.apply_prune(model, masks, matches)


def prune_fprune_groups(case: Case, model: nn.Module, example: Tensor, probe: Probe, round_to: int = 1) -> nn.Module:
    """fprune's channel-group pipeline (what prune_channels does): trace, channel_groups,
    group_masks (L2), apply_prune."""
    with probe.step("trace"):
        gm = fx.symbolic_trace(model)
    with probe.step("groups"):
        groups = fprune.channel_groups(gm, example_inputs=(example,) if case.groups_need_shapes else None)
    with probe.step("masks"):
        masks = fprune.group_masks(model, groups, LEVEL, ignore=case.group_ignore, round_to=round_to)
    with probe.step("apply"):
        return fprune.apply_prune(model, masks, groups)


def prune_torch_ao(case: Case, model: nn.Module, example: Tensor, probe: Probe) -> nn.Module:
    """torch.ao's SaliencyPruner with its default patterns: prepare, step (masks), prune. In place."""
    ao: Any = importlib.import_module("torch.ao.pruning._experimental.pruner")  # untyped

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with probe.step("prepare"):
            pruner = ao.SaliencyPruner({})
            pruner.prepare(model, [{"tensor_fqn": fqn, "sparsity_level": LEVEL} for fqn in case.mask_fqns])
        with probe.step("masks"):
            pruner.step()
        with probe.step("prune"):
            pruned: nn.Module = pruner.prune()
    return pruned


def prune_torch_pruning(case: Case, model: nn.Module, example: Tensor, probe: Probe) -> nn.Module:
    """Torch-Pruning 1.6.1 MagnitudePruner (L2), ratio 0.5, classifier ignored: graph build, step. In place."""
    tp: Any = importlib.import_module("torch_pruning")  # untyped

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with probe.step("graph"):
            pruner = tp.pruner.MagnitudePruner(
                model,
                example,
                importance=tp.importance.MagnitudeImportance(p=2),
                pruning_ratio=LEVEL,
                ignored_layers=[model.get_submodule(case.classifier)],
                **case.tp_options(model),
            )
        with probe.step("prune"):
            pruner.step()
    return model


Pipeline = Callable[[Case, nn.Module, Tensor, Probe], nn.Module]

PIPELINES: dict[str, Pipeline] = {
    "fprune": prune_fprune_patterns,
    "fprune-groups": prune_fprune_groups,
    "torch.ao": prune_torch_ao,
    "torch-pruning": prune_torch_pruning,
}
IN_PLACE = frozenset({"torch.ao", "torch-pruning"})


def parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def size_mib(model: nn.Module) -> float:
    """Bytes of all parameters and buffers, in MiB."""
    tensors = list(model.parameters()) + list(model.buffers())
    return sum(t.numel() * t.element_size() for t in tensors) / 2**20
