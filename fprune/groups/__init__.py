"""Engine B: channel groups, every set of tensor slices of a real architecture that must be
pruned together (residual adds, concats, attention heads, GQA, norms, tied weights ...).

:func:`channel_groups` walks a traced graph once with per-op *flow rules*
(:func:`default_flow_rules`, extensible with your own :class:`FlowRule`); :func:`group_masks`
scores and selects channels per group; ``fprune.apply_prune`` slices the copy. See README.md
in this folder for the algorithm.

Pipeline: :func:`channel_groups` -> :func:`group_masks` -> ``fprune.apply_prune``, or all in
one: ``fprune.prune_channels``.
"""

from .._util.running import ExampleShapes as ExampleShapes
from .._util.running import TensorSpec as TensorSpec
from ._find import channel_groups as channel_groups
from ._flow import Axis as Axis
from ._flow import Flow as Flow
from ._flow import FlowContext as FlowContext
from ._flow import FlowRule as FlowRule
from ._flow import HeadAxis as HeadAxis
from ._flow import RuleKey as RuleKey
from ._flow import flatten_axis as flatten_axis
from ._flow import handles_nonzero as handles_nonzero
from ._mha import HeadPrunedMultiheadAttention as HeadPrunedMultiheadAttention
from ._noop import explain as explain
from ._records import BiasFold as BiasFold
from ._records import Blocker as Blocker
from ._records import ChannelGroup as ChannelGroup
from ._records import ChannelSlice as ChannelSlice
from ._records import GraphKind as GraphKind
from ._records import GroupCriterion as GroupCriterion
from ._records import Inexact as Inexact
from ._records import NormMode as NormMode
from ._records import NormRescale as NormRescale
from ._records import SizeLiteral as SizeLiteral
from ._rules import default_flow_rules as default_flow_rules
from ._scores import group_masks as group_masks
from ._scores import group_scores as group_scores
