"""fprune: functional, typed structured pruning for PyTorch.

The pipeline, top to bottom: keep-masks from pure functions (``saliency_mask``, ...); what must
be pruned together, from a ``torch.fx`` graph, by one of two engines: layer chains
(``match_patterns``, more in :mod:`fprune.patterns`) or channel groups (``channel_groups``,
``group_masks``, more in :mod:`fprune.groups`); and ``apply_prune``, which returns a
physically smaller copy of the model. ``prune_channels`` does it all in one call. Plans
(``make_plan``, ``apply_plan``, ``load_pruned``, ``prune_checkpoint``, more in
:mod:`fprune.plan`) record a pruning as data, to save, reload and stream it.
torch.ao's ``prepare / step / prune`` workflow lives in :mod:`fprune.sparsifier`.
"""

import typing as _typing
import warnings as _warnings

from . import calibrate as calibrate
from . import groups as groups
from . import hf as hf
from . import patterns as patterns
from . import plan as plan
from . import sparsifier as sparsifier
from ._apply import Unfoldable as Unfoldable
from ._apply import apply_prune as apply_prune
from ._apply import masked_parameters as masked_parameters
from ._errors import PruneError as PruneError
from ._masks import Criterion as Criterion
from ._masks import fpgm_mask as fpgm_mask
from ._masks import fpgm_scores as fpgm_scores
from ._masks import l1_norm as l1_norm
from ._masks import l2_norm as l2_norm
from ._masks import lstm_saliency_mask as lstm_saliency_mask
from ._masks import lstm_unit_scores as lstm_unit_scores
from ._masks import row_norms as row_norms
from ._masks import saliency_mask as saliency_mask
from ._masks import select_kept as select_kept
from ._optim import prune_optimizer_state as prune_optimizer_state
from ._prune_channels import prune_channels as prune_channels
from .calibrate import Statistics as Statistics
from .calibrate import collect_statistics as collect_statistics
from .groups import ChannelGroup as ChannelGroup
from .groups import channel_groups as channel_groups
from .groups import explain as explain
from .groups import group_masks as group_masks
from .groups import group_scores as group_scores
from .patterns import Match as Match
from .patterns import default_patterns as default_patterns
from .patterns import match_patterns as match_patterns
from .plan import Plan as Plan
from .plan import apply_plan as apply_plan
from .plan import load_pruned as load_pruned
from .plan import make_plan as make_plan
from .plan import prune_checkpoint as prune_checkpoint

from ._version import __version__ as __version__

# Names that lived at the top level before 0.2: they still work, with a DeprecationWarning,
# for one release; each now lives in the namespace given here.
_MOVED = {
    **dict.fromkeys(
        (
            "ACTIVATION_FUNCTIONS", "ACTIVATION_METHODS", "ACTIVATION_MODULES", "OUTPUT", "PASS_THROUGH_1D",
            "PASS_THROUGH_2D", "PASS_THROUGH_3D", "PASS_THROUGH_FLAT", "PASS_THROUGH_LINEAR", "Attr", "Call",
            "MatchedOp", "ModuleOp", "Op", "Output", "Pattern", "PatternElement", "PruneFunction", "ZeroOrMore",
            "prune_chain", "prune_conv2d", "prune_conv2d_activation_conv2d", "prune_conv2d_activation_pool_conv2d",
            "prune_conv2d_conv2d", "prune_conv2d_pool_activation_conv2d", "prune_conv2d_pool_flatten_linear",
            "prune_linear", "prune_linear_activation_linear", "prune_linear_linear",
            "prune_lstm_output_layernorm_linear", "prune_lstm_output_linear", "rebuild_module",
        ),
        "fprune.patterns",
    ),
    **dict.fromkeys(
        (
            "Axis", "Blocker", "ChannelSlice", "FlowContext", "FlowRule", "HeadPrunedMultiheadAttention",
            "RuleKey", "default_flow_rules",
        ),
        "fprune.groups",
    ),
}  # fmt: skip


if not _typing.TYPE_CHECKING:  # hidden from type checkers: a typo in a name stays an error there

    def __getattr__(name: str) -> object:
        """The moved names, with a DeprecationWarning that says where they live now."""
        namespace = _MOVED.get(name)
        if namespace is None:
            raise AttributeError(f"module 'fprune' has no attribute {name!r}")
        _warnings.warn(
            f"fprune.{name} moved to {namespace}.{name}; the top-level name goes in the next release",
            DeprecationWarning,
            stacklevel=2,
        )
        return getattr(groups if namespace == "fprune.groups" else patterns, name)


if _typing.TYPE_CHECKING:  # the moved names keep their types for code not yet updated
    from .groups import Axis as Axis
    from .groups import Blocker as Blocker
    from .groups import ChannelSlice as ChannelSlice
    from .groups import FlowContext as FlowContext
    from .groups import FlowRule as FlowRule
    from .groups import HeadPrunedMultiheadAttention as HeadPrunedMultiheadAttention
    from .groups import RuleKey as RuleKey
    from .groups import default_flow_rules as default_flow_rules
    from .patterns import ACTIVATION_FUNCTIONS as ACTIVATION_FUNCTIONS
    from .patterns import ACTIVATION_METHODS as ACTIVATION_METHODS
    from .patterns import ACTIVATION_MODULES as ACTIVATION_MODULES
    from .patterns import OUTPUT as OUTPUT
    from .patterns import PASS_THROUGH_1D as PASS_THROUGH_1D
    from .patterns import PASS_THROUGH_2D as PASS_THROUGH_2D
    from .patterns import PASS_THROUGH_3D as PASS_THROUGH_3D
    from .patterns import PASS_THROUGH_FLAT as PASS_THROUGH_FLAT
    from .patterns import PASS_THROUGH_LINEAR as PASS_THROUGH_LINEAR
    from .patterns import Attr as Attr
    from .patterns import Call as Call
    from .patterns import MatchedOp as MatchedOp
    from .patterns import ModuleOp as ModuleOp
    from .patterns import Op as Op
    from .patterns import Output as Output
    from .patterns import Pattern as Pattern
    from .patterns import PatternElement as PatternElement
    from .patterns import PruneFunction as PruneFunction
    from .patterns import ZeroOrMore as ZeroOrMore
    from .patterns import prune_chain as prune_chain
    from .patterns import prune_conv2d as prune_conv2d
    from .patterns import (
        prune_conv2d_activation_conv2d as prune_conv2d_activation_conv2d,
    )
    from .patterns import (
        prune_conv2d_activation_pool_conv2d as prune_conv2d_activation_pool_conv2d,
    )
    from .patterns import prune_conv2d_conv2d as prune_conv2d_conv2d
    from .patterns import (
        prune_conv2d_pool_activation_conv2d as prune_conv2d_pool_activation_conv2d,
    )
    from .patterns import (
        prune_conv2d_pool_flatten_linear as prune_conv2d_pool_flatten_linear,
    )
    from .patterns import prune_linear as prune_linear
    from .patterns import (
        prune_linear_activation_linear as prune_linear_activation_linear,
    )
    from .patterns import prune_linear_linear as prune_linear_linear
    from .patterns import (
        prune_lstm_output_layernorm_linear as prune_lstm_output_layernorm_linear,
    )
    from .patterns import prune_lstm_output_linear as prune_lstm_output_linear
    from .patterns import rebuild_module as rebuild_module
