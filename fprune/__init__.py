"""fprune: functional, typed structured pruning for PyTorch.

Pure functions compute keep-masks, ``match_patterns`` finds layer chains in a ``torch.fx``
graph, and ``apply_prune`` returns a physically smaller copy of the model.
"""

from ._apply import apply_prune as apply_prune
from ._apply import masked_parameters as masked_parameters
from ._errors import PruneError as PruneError
from ._flow_rules import default_flow_rules as default_flow_rules
from ._group_prune import Criterion as Criterion
from ._group_prune import group_masks as group_masks
from ._group_prune import group_scores as group_scores
from ._group_prune import l1_norm as l1_norm
from ._group_prune import l2_norm as l2_norm
from ._group_prune import prune_channels as prune_channels
from ._groups import Axis as Axis
from ._groups import Blocker as Blocker
from ._groups import ChannelGroup as ChannelGroup
from ._groups import ChannelSlice as ChannelSlice
from ._groups import FlowContext as FlowContext
from ._groups import FlowRule as FlowRule
from ._groups import RuleKey as RuleKey
from ._groups import channel_groups as channel_groups
from ._groups import explain as explain
from ._mha import HeadPrunedMultiheadAttention as HeadPrunedMultiheadAttention
from ._masks import fpgm_mask as fpgm_mask
from ._masks import fpgm_scores as fpgm_scores
from ._masks import lstm_saliency_mask as lstm_saliency_mask
from ._masks import lstm_unit_scores as lstm_unit_scores
from ._masks import row_norms as row_norms
from ._masks import saliency_mask as saliency_mask
from ._masks import select_kept as select_kept
from ._match import match_patterns as match_patterns
from ._optim import prune_optimizer_state as prune_optimizer_state
from ._patterns import ACTIVATION_FUNCTIONS as ACTIVATION_FUNCTIONS
from ._patterns import ACTIVATION_METHODS as ACTIVATION_METHODS
from ._patterns import ACTIVATION_MODULES as ACTIVATION_MODULES
from ._patterns import PASS_THROUGH_1D as PASS_THROUGH_1D
from ._patterns import PASS_THROUGH_2D as PASS_THROUGH_2D
from ._patterns import PASS_THROUGH_3D as PASS_THROUGH_3D
from ._patterns import PASS_THROUGH_FLAT as PASS_THROUGH_FLAT
from ._patterns import PASS_THROUGH_LINEAR as PASS_THROUGH_LINEAR
from ._patterns import default_patterns as default_patterns
from ._prune_functions import prune_chain as prune_chain
from ._prune_functions import prune_conv2d as prune_conv2d
from ._prune_functions import prune_conv2d_activation_conv2d as prune_conv2d_activation_conv2d
from ._prune_functions import prune_conv2d_activation_pool_conv2d as prune_conv2d_activation_pool_conv2d
from ._prune_functions import prune_conv2d_conv2d as prune_conv2d_conv2d
from ._prune_functions import prune_conv2d_pool_activation_conv2d as prune_conv2d_pool_activation_conv2d
from ._prune_functions import prune_conv2d_pool_flatten_linear as prune_conv2d_pool_flatten_linear
from ._prune_functions import prune_linear as prune_linear
from ._prune_functions import prune_linear_activation_linear as prune_linear_activation_linear
from ._prune_functions import prune_linear_linear as prune_linear_linear
from ._prune_functions import prune_lstm_output_layernorm_linear as prune_lstm_output_layernorm_linear
from ._prune_functions import prune_lstm_output_linear as prune_lstm_output_linear
from ._prune_functions import rebuild_module as rebuild_module
from ._records import OUTPUT as OUTPUT
from ._records import Attr as Attr
from ._records import Call as Call
from ._records import Match as Match
from ._records import MatchedOp as MatchedOp
from ._records import ModuleOp as ModuleOp
from ._records import Op as Op
from ._records import Output as Output
from ._records import Pattern as Pattern
from ._records import PatternElement as PatternElement
from ._records import PruneFunction as PruneFunction
from ._records import ZeroOrMore as ZeroOrMore

__version__ = "0.1.0"

__all__ = [
    "ACTIVATION_FUNCTIONS",
    "Axis",
    "Blocker",
    "ChannelGroup",
    "ChannelSlice",
    "Criterion",
    "HeadPrunedMultiheadAttention",
    "FlowContext",
    "FlowRule",
    "RuleKey",
    "channel_groups",
    "default_flow_rules",
    "explain",
    "group_masks",
    "group_scores",
    "l1_norm",
    "l2_norm",
    "prune_channels",
    "ACTIVATION_METHODS",
    "ACTIVATION_MODULES",
    "OUTPUT",
    "PASS_THROUGH_1D",
    "PASS_THROUGH_2D",
    "PASS_THROUGH_3D",
    "PASS_THROUGH_FLAT",
    "PASS_THROUGH_LINEAR",
    "Attr",
    "Call",
    "Match",
    "MatchedOp",
    "ModuleOp",
    "Op",
    "Output",
    "Pattern",
    "PatternElement",
    "PruneError",
    "PruneFunction",
    "apply_prune",
    "default_patterns",
    "fpgm_mask",
    "fpgm_scores",
    "lstm_saliency_mask",
    "lstm_unit_scores",
    "masked_parameters",
    "match_patterns",
    "prune_chain",
    "prune_conv2d",
    "prune_conv2d_activation_conv2d",
    "prune_conv2d_activation_pool_conv2d",
    "prune_conv2d_conv2d",
    "prune_conv2d_pool_activation_conv2d",
    "prune_conv2d_pool_flatten_linear",
    "prune_linear",
    "prune_linear_activation_linear",
    "prune_linear_linear",
    "prune_lstm_output_layernorm_linear",
    "prune_lstm_output_linear",
    "prune_optimizer_state",
    "rebuild_module",
    "row_norms",
    "saliency_mask",
    "select_kept",
    "ZeroOrMore",
]
