"""A zoo of small reference models from real architecture families, written from scratch.

Every model is tiny (fast on CPU), fully typed and traceable by `torch.fx.symbolic_trace`:
no forward uses data-dependent Python control flow, and the only shape reads are
`x.shape[0]` / `x.shape[1]` in the transformer blocks, which fx records as graph nodes.

`ZOO` maps a short name to a builder returning `(model in eval mode, example input)`; each
builder seeds torch with 0 first, so both the weights and the input are deterministic.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "ZOO",
    "DenseNetStyle",
    "LSTMLanguageModel",
    "LlamaStyleDecoder",
    "MobileNetV2Style",
    "RMSNorm",
    "ResNet18Style",
    "ResNet50Style",
    "ViTStyle",
    "example_input",
]


def _image_input() -> Tensor:
    return torch.randn(2, 3, 32, 32)


# --------------------------------------------------------------------------- ResNet


def _shortcut(in_ch: int, out_ch: int, stride: int) -> nn.Module:
    """A residual block's shortcut: conv1x1-BN where the shape changes, else identity."""
    if stride != 1 or in_ch != out_ch:
        return nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, stride=stride, bias=False), nn.BatchNorm2d(out_ch))
    return nn.Identity()


class BasicBlock(nn.Module):
    """ResNet basic block: conv3x3-BN-ReLU-conv3x3-BN, plus a shortcut, then ReLU after the add.

    The shortcut is the identity, or conv1x1(stride)-BN when the stride or channel count changes.
    """

    def __init__(self, in_ch: int, out_ch: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.downsample = _shortcut(in_ch, out_ch, stride)

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.downsample(x))


class _ResNet(nn.Module):
    """The stem, four stages, pool and classifier that both ResNet layouts share; subclasses
    set conv1, bn1, layer1..layer4, avgpool and fc."""

    conv1: nn.Conv2d
    bn1: nn.BatchNorm2d
    layer1: nn.Module
    layer2: nn.Module
    layer3: nn.Module
    layer4: nn.Module
    avgpool: nn.Module
    fc: nn.Linear

    @staticmethod
    def example_input() -> Tensor:
        """A 2x3x32x32 image batch."""
        return _image_input()

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        out: Tensor = self.fc(torch.flatten(self.avgpool(x), 1))
        return out


class ResNet18Style(_ResNet):
    """ResNet-18 layout at small width.

    Stem conv3x3(3->w)-BN-ReLU (no max pool); 4 stages of 2 `BasicBlock`s with widths
    w, 2w, 4w, 8w (stages 2-4 start with stride 2 and a conv1x1-BN downsample shortcut);
    AdaptiveAvgPool2d(1) -> flatten(1) -> Linear(8w, num_classes).
    """

    def __init__(self, num_classes: int = 10, width: int = 16) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        widths = [width, 2 * width, 4 * width, 8 * width]
        in_ch = width
        stages: list[nn.Module] = []
        for i, w in enumerate(widths):
            stride = 1 if i == 0 else 2
            stages.append(nn.Sequential(BasicBlock(in_ch, w, stride), BasicBlock(w, w)))
            in_ch = w
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_ch, num_classes)



class Bottleneck(nn.Module):
    """ResNet bottleneck: conv1x1 reduce-BN-ReLU, conv3x3(stride)-BN-ReLU, conv1x1 expand (x4)-BN,
    plus a shortcut (identity, or conv1x1(stride)-BN when the shape changes), then ReLU after the add.
    """

    expansion = 4

    def __init__(self, in_ch: int, mid_ch: int, stride: int = 1) -> None:
        super().__init__()
        out_ch = mid_ch * self.expansion
        self.conv1 = nn.Conv2d(in_ch, mid_ch, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(mid_ch)
        self.conv2 = nn.Conv2d(mid_ch, mid_ch, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(mid_ch)
        self.conv3 = nn.Conv2d(mid_ch, out_ch, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_ch)
        self.downsample = _shortcut(in_ch, out_ch, stride)

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return F.relu(out + self.downsample(x))


class ResNet50Style(_ResNet):
    """ResNet-50 layout (bottleneck blocks) with reduced depth and width.

    Stem conv3x3(3->w)-BN-ReLU; 4 stages of `Bottleneck` blocks with bottleneck widths
    w, 2w, 4w, 8w (outputs 4x that) and depths (1, 2, 2, 1) by default instead of ResNet-50's
    (3, 4, 6, 3), to stay small (``width=64, depths=(3, 4, 6, 3)`` gives ResNet-50's ~25M
    parameters). Stages 2-4 start with stride 2; the first block of every stage has a
    conv1x1-BN downsample shortcut (the channel count changes), later blocks use the identity.
    AdaptiveAvgPool2d(1) -> flatten(1) -> Linear(32w, num_classes).
    """

    depths: tuple[int, int, int, int] = (1, 2, 2, 1)

    def __init__(
        self, num_classes: int = 10, width: int = 16, depths: tuple[int, int, int, int] = (1, 2, 2, 1)
    ) -> None:
        super().__init__()
        self.depths = depths
        self.conv1 = nn.Conv2d(3, width, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        in_ch = width
        stages: list[nn.Module] = []
        for i, depth in enumerate(self.depths):
            mid = width * 2**i
            blocks: list[nn.Module] = []
            for j in range(depth):
                stride = 2 if (i > 0 and j == 0) else 1
                blocks.append(Bottleneck(in_ch, mid, stride))
                in_ch = mid * Bottleneck.expansion
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_ch, num_classes)



# --------------------------------------------------------------------------- MobileNetV2


def _make_divisible(v: float, divisor: int = 8) -> int:
    """Round `v` to the nearest multiple of `divisor`, never going below 90% of `v` (MobileNet rule)."""
    new_v = max(divisor, int(v + divisor / 2) // divisor * divisor)
    if new_v < 0.9 * v:
        new_v += divisor
    return new_v


def _conv_bn_relu6(in_ch: int, out_ch: int, kernel: int, stride: int = 1, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_ch, out_ch, kernel, stride=stride, padding=kernel // 2, groups=groups, bias=False),
        nn.BatchNorm2d(out_ch),
        nn.ReLU6(inplace=True),
    )


class InvertedResidual(nn.Module):
    """MobileNetV2 block: [expand conv1x1-BN-ReLU6 if expand_ratio != 1] -> depthwise conv3x3(stride,
    groups=hidden)-BN-ReLU6 -> project conv1x1-BN (linear), plus a residual add when stride == 1 and
    in_ch == out_ch.
    """

    def __init__(self, in_ch: int, out_ch: int, stride: int, expand_ratio: int) -> None:
        super().__init__()
        hidden = in_ch * expand_ratio
        self.use_res = stride == 1 and in_ch == out_ch
        layers: list[nn.Module] = []
        if expand_ratio != 1:
            layers.append(_conv_bn_relu6(in_ch, hidden, 1))
        layers += [
            _conv_bn_relu6(hidden, hidden, 3, stride=stride, groups=hidden),
            nn.Conv2d(hidden, out_ch, 1, bias=False),
            nn.BatchNorm2d(out_ch),
        ]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.conv(x)
        if self.use_res:  # a constructor-time flag, not data-dependent: fx specializes on it
            return x + out
        return out


class MobileNetV2Style(nn.Module):
    """MobileNetV2 layout with a short block list.

    Stem conv3x3(stride 2)-BN-ReLU6 (32 * width_mult channels); `InvertedResidual` stages from
    `config` rows (expand_ratio t, channels c, repeats n, first stride s), channels scaled by
    width_mult; final conv1x1-BN-ReLU6 (1280 * width_mult channels); AdaptiveAvgPool2d(1) ->
    flatten(1) -> Dropout(0.2) -> Linear(num_classes). Channel counts are rounded to multiples of 8.
    `config` defaults to the short class-level list; MobileNetV2's full list is ``((1, 16, 1, 1),
    (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))``.
    """

    config: tuple[tuple[int, int, int, int], ...] = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 2, 2), (6, 64, 1, 2))

    def __init__(
        self,
        num_classes: int = 10,
        width_mult: float = 0.5,
        config: tuple[tuple[int, int, int, int], ...] | None = None,
    ) -> None:
        super().__init__()
        if config is not None:
            self.config = config
        in_ch = _make_divisible(32 * width_mult)
        last_ch = _make_divisible(1280 * width_mult)
        layers: list[nn.Module] = [_conv_bn_relu6(3, in_ch, 3, stride=2)]
        for t, c, n, s in self.config:
            out_ch = _make_divisible(c * width_mult)
            for i in range(n):
                layers.append(InvertedResidual(in_ch, out_ch, s if i == 0 else 1, t))
                in_ch = out_ch
        layers.append(_conv_bn_relu6(in_ch, last_ch, 1))
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(last_ch, num_classes))

    @staticmethod
    def example_input() -> Tensor:
        """A 2x3x32x32 image batch."""
        return _image_input()

    def forward(self, x: Tensor) -> Tensor:
        x = self.pool(self.features(x))
        out: Tensor = self.classifier(torch.flatten(x, 1))
        return out


# --------------------------------------------------------------------------- DenseNet


class DenseLayer(nn.Module):
    """DenseNet-BC layer: BN-ReLU-conv1x1(4*growth)-BN-ReLU-conv3x3(growth); returns cat([x, new], 1)."""

    def __init__(self, in_ch: int, growth: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_ch)
        self.conv1 = nn.Conv2d(in_ch, 4 * growth, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(4 * growth)
        self.conv2 = nn.Conv2d(4 * growth, growth, 3, padding=1, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        new = self.conv1(F.relu(self.bn1(x)))
        new = self.conv2(F.relu(self.bn2(new)))
        return torch.cat([x, new], 1)


class Transition(nn.Module):
    """DenseNet transition: BN-ReLU-conv1x1-AvgPool2d(2)."""

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(in_ch)
        self.conv = nn.Conv2d(in_ch, out_ch, 1, bias=False)
        self.pool = nn.AvgPool2d(2)

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.pool(self.conv(F.relu(self.bn(x))))
        return out


class DenseNetStyle(nn.Module):
    """DenseNet-BC layout, two dense blocks.

    Stem conv3x3(3 -> 2*growth); dense block of `layers_per_block` `DenseLayer`s (each adds `growth`
    channels by concatenation); `Transition` halving channels and spatial size; a second dense block;
    final BN-ReLU -> AdaptiveAvgPool2d(1) -> flatten(1) -> Linear(num_classes).
    """

    def __init__(self, num_classes: int = 10, growth: int = 8, layers_per_block: int = 3) -> None:
        super().__init__()
        ch = 2 * growth
        self.conv0 = nn.Conv2d(3, ch, 3, padding=1, bias=False)
        block1: list[nn.Module] = []
        for _ in range(layers_per_block):
            block1.append(DenseLayer(ch, growth))
            ch += growth
        self.block1 = nn.Sequential(*block1)
        self.trans1 = Transition(ch, ch // 2)
        ch //= 2
        block2: list[nn.Module] = []
        for _ in range(layers_per_block):
            block2.append(DenseLayer(ch, growth))
            ch += growth
        self.block2 = nn.Sequential(*block2)
        self.norm = nn.BatchNorm2d(ch)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(ch, num_classes)

    @staticmethod
    def example_input() -> Tensor:
        """A 2x3x32x32 image batch."""
        return _image_input()

    def forward(self, x: Tensor) -> Tensor:
        x = self.block2(self.trans1(self.block1(self.conv0(x))))
        x = self.pool(F.relu(self.norm(x)))
        out: Tensor = self.fc(torch.flatten(x, 1))
        return out


# --------------------------------------------------------------------------- ViT


class ViTBlock(nn.Module):
    """Pre-norm transformer encoder block: x + MHA(LN(x)), then x + MLP(LN(x)) with MLP Linear-GELU-Linear."""

    def __init__(self, dim: int, heads: int, mlp_ratio: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, dim * mlp_ratio), nn.GELU(), nn.Linear(dim * mlp_ratio, dim))

    def forward(self, x: Tensor) -> Tensor:
        h = self.norm1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        out: Tensor = x + self.mlp(self.norm2(x))
        return out


class ViTStyle(nn.Module):
    """Vision Transformer layout.

    Patch embedding Conv2d(3, dim, patch, stride=patch) -> flatten(2).transpose(1, 2); a learned cls
    token prepended (torch.cat with expand); a learned position embedding added; `depth` pre-norm
    `ViTBlock`s (nn.MultiheadAttention, batch_first); final LayerNorm; token 0 -> Linear head.
    """

    def __init__(
        self,
        image: int = 32,
        patch: int = 8,
        dim: int = 64,
        depth: int = 2,
        heads: int = 4,
        mlp_ratio: int = 2,
        num_classes: int = 10,
    ) -> None:
        super().__init__()
        num_patches = (image // patch) ** 2
        self.patch_embed = nn.Conv2d(3, dim, patch, stride=patch)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, num_patches + 1, dim))
        nn.init.normal_(self.cls_token, std=0.02)
        nn.init.normal_(self.pos_embed, std=0.02)
        self.blocks = nn.Sequential(*[ViTBlock(dim, heads, mlp_ratio) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    @staticmethod
    def example_input() -> Tensor:
        """A 2x3x32x32 image batch."""
        return _image_input()

    def forward(self, x: Tensor) -> Tensor:
        x = self.patch_embed(x).flatten(2).transpose(1, 2)
        cls = self.cls_token.expand(x.shape[0], -1, -1)
        x = torch.cat([cls, x], dim=1) + self.pos_embed
        x = self.norm(self.blocks(x))
        out: Tensor = self.head(x[:, 0])
        return out


# --------------------------------------------------------------------------- Llama


class RMSNorm(nn.Module):
    """Root-mean-square norm: x * rsqrt(mean(x^2, -1, keepdim) + eps) * weight."""

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


class LlamaAttention(nn.Module):
    """Causal grouped-query attention without biases (no rotary embedding).

    q_proj: dim -> heads*head_dim, k_proj / v_proj: dim -> kv_heads*head_dim; heads split via
    view(b, t, h, head_dim).transpose(1, 2); k and v repeat_interleave'd by heads // kv_heads on
    the head axis; F.scaled_dot_product_attention(is_causal=True); transpose back, reshape, o_proj.
    """

    def __init__(self, dim: int, heads: int, kv_heads: int) -> None:
        super().__init__()
        if dim % heads != 0 or heads % kv_heads != 0:
            raise ValueError(f"need dim % heads == 0 and heads % kv_heads == 0, got {dim=}, {heads=}, {kv_heads=}")
        self.heads = heads
        self.kv_heads = kv_heads
        self.head_dim = dim // heads
        self.q_proj = nn.Linear(dim, heads * self.head_dim, bias=False)
        self.k_proj = nn.Linear(dim, kv_heads * self.head_dim, bias=False)
        self.v_proj = nn.Linear(dim, kv_heads * self.head_dim, bias=False)
        self.o_proj = nn.Linear(heads * self.head_dim, dim, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        b, t = x.shape[0], x.shape[1]
        q = self.q_proj(x).view(b, t, self.heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(b, t, self.kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(b, t, self.kv_heads, self.head_dim).transpose(1, 2)
        rep = self.heads // self.kv_heads
        k = k.repeat_interleave(rep, dim=1)
        v = v.repeat_interleave(rep, dim=1)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        y = y.transpose(1, 2).reshape(b, t, self.heads * self.head_dim)
        out: Tensor = self.o_proj(y)
        return out


class SwiGLU(nn.Module):
    """Llama MLP: down_proj(silu(gate_proj(x)) * up_proj(x)), no biases."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(dim, hidden, bias=False)
        self.up_proj = nn.Linear(dim, hidden, bias=False)
        self.down_proj = nn.Linear(hidden, dim, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))
        return out


class LlamaBlock(nn.Module):
    """Pre-norm decoder block: x + attn(RMSNorm(x)), then x + SwiGLU(RMSNorm(x))."""

    def __init__(self, dim: int, heads: int, kv_heads: int, hidden: int) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(dim)
        self.self_attn = LlamaAttention(dim, heads, kv_heads)
        self.post_attention_layernorm = RMSNorm(dim)
        self.mlp = SwiGLU(dim, hidden)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.self_attn(self.input_layernorm(x))
        out: Tensor = x + self.mlp(self.post_attention_layernorm(x))
        return out


class LlamaStyleDecoder(nn.Module):
    """Llama-style causal language model (no rotary embedding, no KV cache).

    nn.Embedding(vocab, dim) -> `depth` `LlamaBlock`s (RMSNorm, grouped-query attention with
    head_dim = dim // heads and kv_heads key/value heads; kv_heads == heads gives plain MHA;
    SwiGLU MLP) -> final RMSNorm -> lm_head Linear(dim, vocab, bias=False). Input: token ids (b, t);
    output: logits (b, t, vocab).
    """

    def __init__(
        self, vocab: int = 100, dim: int = 64, depth: int = 2, heads: int = 4, kv_heads: int = 2, hidden: int = 128
    ) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(vocab, dim)
        self.layers = nn.Sequential(*[LlamaBlock(dim, heads, kv_heads, hidden) for _ in range(depth)])
        self.norm = RMSNorm(dim)
        self.lm_head = nn.Linear(dim, vocab, bias=False)

    @staticmethod
    def example_input(vocab: int = 100) -> Tensor:
        """A 2x12 LongTensor of token ids in [0, vocab)."""
        return torch.randint(0, vocab, (2, 12))

    def forward(self, ids: Tensor) -> Tensor:
        x = self.norm(self.layers(self.embed_tokens(ids)))
        out: Tensor = self.lm_head(x)
        return out


# --------------------------------------------------------------------------- LSTM


class LSTMLanguageModel(nn.Module):
    """Embedding(vocab, embed) -> nn.LSTM(embed, hidden, layers, batch_first=True) -> output[0] ->
    Linear(hidden, vocab). Input: token ids (b, t); output: logits (b, t, vocab).

    The LSTM stays a single leaf module under fx (its output tuple is indexed with getitem).
    """

    def __init__(self, vocab: int = 50, embed: int = 16, hidden: int = 32, layers: int = 2) -> None:
        super().__init__()
        self.embedding = nn.Embedding(vocab, embed)
        self.lstm = nn.LSTM(embed, hidden, layers, batch_first=True)
        self.fc = nn.Linear(hidden, vocab)

    @staticmethod
    def example_input(vocab: int = 50) -> Tensor:
        """A 3x7 LongTensor of token ids in [0, vocab)."""
        return torch.randint(0, vocab, (3, 7))

    def forward(self, ids: Tensor) -> Tensor:
        out = self.lstm(self.embedding(ids))[0]
        logits: Tensor = self.fc(out)
        return logits


# --------------------------------------------------------------------------- ZOO


def _init_bn(module: nn.Module) -> nn.Module:
    """Randomize every BatchNorm's running stats and affine params in place (so BN is not identity).

    running_mean ~ N(0, 0.1), running_var ~ U(0.5, 1.5), weight ~ U(0.5, 1.5), bias ~ N(0, 0.1).
    Returns `module` for chaining.
    """
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                if m.running_mean is not None and m.running_var is not None:
                    m.running_mean.normal_(0.0, 0.1)
                    m.running_var.uniform_(0.5, 1.5)
                if m.affine:
                    m.weight.uniform_(0.5, 1.5)
                    m.bias.normal_(0.0, 0.1)
    return module


_CLASSES: dict[str, Callable[[], nn.Module]] = {
    "resnet18": ResNet18Style,
    "resnet50": ResNet50Style,
    "mobilenetv2": MobileNetV2Style,
    "densenet": DenseNetStyle,
    "vit": ViTStyle,
    "llama": LlamaStyleDecoder,
    "lstm_lm": LSTMLanguageModel,
}

_INPUTS: dict[str, Callable[[], Tensor]] = {
    "resnet18": ResNet18Style.example_input,
    "resnet50": ResNet50Style.example_input,
    "mobilenetv2": MobileNetV2Style.example_input,
    "densenet": DenseNetStyle.example_input,
    "vit": ViTStyle.example_input,
    "llama": LlamaStyleDecoder.example_input,
    "lstm_lm": LSTMLanguageModel.example_input,
}


def example_input(model_name: str) -> Tensor:
    """The example input for a `ZOO` key (for the default constructor arguments); random values, fixed shape."""
    return _INPUTS[model_name]()


def _builder(name: str) -> Callable[[], tuple[nn.Module, Tensor]]:
    def build() -> tuple[nn.Module, Tensor]:
        torch.manual_seed(0)
        model = _init_bn(_CLASSES[name]()).eval()
        return model, example_input(name)

    build.__name__ = f"build_{name}"
    build.__doc__ = f"Seed 0, build `{_CLASSES[name].__name__}` with random BN stats, eval mode; plus its input."
    return build


ZOO: dict[str, Callable[[], tuple[nn.Module, Tensor]]] = {name: _builder(name) for name in _CLASSES}
"""Name -> builder of (model in eval mode with randomized BatchNorm, example input); deterministic."""
