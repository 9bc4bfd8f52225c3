"""The default flow-rule table: which rule follows each module class, function and method name."""

from __future__ import annotations

import operator

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.instancenorm import _InstanceNorm

from ..._ops import (
    ACTIVATION_FUNCTIONS,
    ACTIVATION_METHODS,
    ACTIVATION_MODULES,
    CAST_METHODS,
    DROPOUT_FUNCTIONS,
    DROPOUT_MODULES,
    POOLS,
)
from .._flow import FlowRule, RuleKey
from ._attention import (
    matmul_rule,
    multihead_attention_rule,
    repeat_heads_rule,
    repeat_interleave_rule,
    sdpa_rule,
    softmax_module_rule,
    softmax_rule,
)
from ._elementwise import (
    elementwise_call_rule,
    elementwise_module_rule,
    fresh_tensor_rule,
    keep_rule,
    merge_elementwise_rule,
    neg_rule,
)
from ._functional import addmm_rule, conv_call_rule, embedding_call_rule, linear_call_rule
from ._layers import (
    batch_norm_call_rule,
    batchnorm_rule,
    conv_rule,
    embedding_rule,
    linear_rule,
    lstm_rule,
    normalization_rule,
    prelu_rule,
)
from ._layout import (
    cat_rule,
    channel_shuffle_rule,
    expand_rule,
    flatten_rule,
    floordiv_rule,
    getitem_rule,
    interpolate_rule,
    metadata_rule,
    permute_rule,
    reduce_mean_rule,
    split_rule,
    transpose_rule,
    unsqueeze_rule,
    view_rule,
)
from ._norms import (
    group_norm_call_rule,
    group_norm_rule,
    layer_norm_call_rule,
    layer_norm_rule,
    per_channel_norm,
    pow_rule,
    rms_norm_call_rule,
    rms_norm_module_rule,
)
from ._rotary import head_rsqrt_rule
from ._vit import roll_rule, unbind_rule
from ._wrapped import stochastic_depth_rule


def default_flow_rules() -> dict[RuleKey, FlowRule]:
    """A fresh dict of the flow rules fprune ships, by module class, function or method name.

    Extend it with rules for your own modules and pass it to :func:`channel_groups`.
    """
    rules: dict[RuleKey, FlowRule] = {
        nn.Linear: linear_rule,
        nn.Conv1d: conv_rule,
        nn.Conv2d: conv_rule,
        nn.Conv3d: conv_rule,
        nn.ConvTranspose1d: conv_rule,
        nn.ConvTranspose2d: conv_rule,
        nn.ConvTranspose3d: conv_rule,
        nn.Embedding: embedding_rule,
        F.linear: linear_call_rule,  # on model tensors, as torch.export graphs call every layer
        F.embedding: embedding_call_rule,
        torch.addmm: addmm_rule,  # Hugging Face's Conv1D (GPT-2)
        _BatchNorm: batchnorm_rule,
        nn.PReLU: prelu_rule,
        nn.LayerNorm: layer_norm_rule,  # blocks, or with norms="renormalize" prunes (_norms.py)
        nn.GroupNorm: group_norm_rule,
        _InstanceNorm: per_channel_norm,  # exact: statistics per channel
        nn.RMSNorm: rms_norm_module_rule,  # exact: weight and eps rescaled
        F.layer_norm: layer_norm_call_rule,
        F.group_norm: group_norm_call_rule,
        nn.LocalResponseNorm: normalization_rule,
        **dict.fromkeys(("pow", torch.pow, operator.pow), pow_rule),
        **dict.fromkeys(("new_empty", "new_zeros", "new_ones", "new_full"), fresh_tensor_rule),  # DropPath's keep mask
        **dict.fromkeys((operator.neg, torch.neg, "neg"), neg_rule),  # rotate_half
        operator.floordiv: floordiv_rule,  # num_channels // groups of a channel shuffle
        **dict.fromkeys(("unbind", torch.unbind), unbind_rule),  # timm's ViT: q, k, v = qkv.unbind(0)
        **dict.fromkeys(("roll", torch.roll), roll_rule),  # Swin's shifted windows
        "torchvision.ops.stochastic_depth.stochastic_depth": stochastic_depth_rule,  # fx.wrap keeps it whole
        nn.LSTM: lstm_rule,
        nn.MultiheadAttention: multihead_attention_rule,
        nn.Flatten: flatten_rule,
        torch.flatten: flatten_rule,
        "flatten": flatten_rule,
        operator.getitem: getitem_rule,
        torch.cat: cat_rule,
        torch.concat: cat_rule,
        torch.split: split_rule,
        torch.chunk: split_rule,
        "split": split_rule,
        "chunk": split_rule,
        torch.mean: reduce_mean_rule,
        "mean": reduce_mean_rule,
        "contiguous": keep_rule,
        F.batch_norm: batch_norm_call_rule,
        F.instance_norm: batch_norm_call_rule,
        "expand": expand_rule,
        "expand_as": expand_rule,
        **dict.fromkeys((torch.sum, "sum", torch.amax, "amax", torch.amin, "amin"), reduce_mean_rule),
        **dict.fromkeys(("clone", torch.clone, "detach", *CAST_METHODS), keep_rule),
        **dict.fromkeys((F.interpolate, nn.Upsample, nn.UpsamplingNearest2d, nn.UpsamplingBilinear2d), interpolate_rule),
        **dict.fromkeys(("unsqueeze", torch.unsqueeze), unsqueeze_rule),
        **dict.fromkeys((nn.ChannelShuffle, F.channel_shuffle, torch.channel_shuffle), channel_shuffle_rule),
        "view": view_rule,
        "reshape": view_rule,
        torch.reshape: view_rule,
        "transpose": transpose_rule,
        torch.transpose: transpose_rule,
        "permute": permute_rule,
        torch.permute: permute_rule,
        "repeat_interleave": repeat_interleave_rule,
        torch.repeat_interleave: repeat_interleave_rule,
        F.scaled_dot_product_attention: sdpa_rule,
        operator.matmul: matmul_rule,
        torch.matmul: matmul_rule,
        "matmul": matmul_rule,
        F.softmax: softmax_rule,
        torch.softmax: softmax_rule,
        "softmax": softmax_rule,
        "size": lambda ctx: None,
        getattr: metadata_rule,
        "dim": lambda ctx: None,
    }
    for module in ACTIVATION_MODULES:
        if module is not nn.PReLU:
            assert isinstance(module, type)
            rules[module] = elementwise_module_rule
    rules[nn.Identity] = keep_rule
    for module in DROPOUT_MODULES:
        rules[module] = keep_rule
    for module in (nn.ReLU6, nn.Softsign):
        rules[module] = elementwise_module_rule
    for function in ACTIVATION_FUNCTIONS + ACTIVATION_METHODS + ("relu_", "gelu", "silu"):
        rules[function] = elementwise_call_rule
    for op in POOLS + DROPOUT_FUNCTIONS:
        rules[op] = keep_rule
    for merge in (operator.add, operator.iadd, torch.add, "add", "add_", operator.sub, torch.sub, "sub",
                  operator.mul, operator.imul, torch.mul, "mul", "mul_", operator.truediv, torch.div, "div"):  # fmt: skip
        rules[merge] = merge_elementwise_rule
    rules[nn.Softmax] = softmax_module_rule
    rules["repeat"] = repeat_heads_rule
    rules[F.rms_norm] = rms_norm_call_rule  # nn.RMSNorm as torch.export records it
    rules[F.conv1d] = conv_call_rule  # on model tensors, as torch.export records an nn.Conv1d
    rules[F.conv2d] = conv_call_rule  # on model tensors, as torch.export records an nn.Conv2d
    rules[F.conv3d] = conv_call_rule  # on model tensors, as torch.export records an nn.Conv3d
    rules.update(dict.fromkeys((torch.rsqrt, "rsqrt"), head_rsqrt_rule))  # Qwen3's RMSNorm over each head
    rules["type_as"] = keep_rule  # a cast: of the other tensor only its dtype is read (Gemma's RMSNorm)
    rules[torch.abs] = elementwise_call_rule  # aten.abs in an exported graph (elementwise, abs(0) = 0)
    return rules
