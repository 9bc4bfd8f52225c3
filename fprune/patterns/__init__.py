"""Engine A: torch.ao-style layer chains.

A *pattern* is a tuple of ops, producer first (``(nn.Linear, nn.ReLU, nn.Linear)``, with
:class:`ZeroOrMore` runs); :func:`match_patterns` finds every chain of a traced graph that a
pattern matches, and each match names the *prune function* that shrinks its modules
(``prune_linear_linear``, ..., or the general :func:`prune_chain`). ``fprune.apply_prune``
runs them on a copy of the model.

Pipeline: ``fprune.saliency_mask`` (masks) -> :func:`match_patterns` (this package) ->
``fprune.apply_prune``.
"""

from .._ops import ACTIVATION_FUNCTIONS as ACTIVATION_FUNCTIONS
from .._ops import ACTIVATION_METHODS as ACTIVATION_METHODS
from .._ops import ACTIVATION_MODULES as ACTIVATION_MODULES
from ._defaults import PASS_THROUGH_1D as PASS_THROUGH_1D
from ._defaults import PASS_THROUGH_2D as PASS_THROUGH_2D
from ._defaults import PASS_THROUGH_3D as PASS_THROUGH_3D
from ._defaults import PASS_THROUGH_FLAT as PASS_THROUGH_FLAT
from ._defaults import PASS_THROUGH_LINEAR as PASS_THROUGH_LINEAR
from ._defaults import PatternDict as PatternDict
from ._defaults import default_patterns as default_patterns
from ._functions import UnfoldableConstant as UnfoldableConstant
from ._functions import prune_chain as prune_chain
from ._functions import prune_conv2d as prune_conv2d
from ._functions import prune_conv2d_activation_conv2d as prune_conv2d_activation_conv2d
from ._functions import (
    prune_conv2d_activation_pool_conv2d as prune_conv2d_activation_pool_conv2d,
)
from ._functions import prune_conv2d_conv2d as prune_conv2d_conv2d
from ._functions import (
    prune_conv2d_pool_activation_conv2d as prune_conv2d_pool_activation_conv2d,
)
from ._functions import (
    prune_conv2d_pool_flatten_linear as prune_conv2d_pool_flatten_linear,
)
from ._functions import prune_linear as prune_linear
from ._functions import prune_linear_activation_linear as prune_linear_activation_linear
from ._functions import prune_linear_linear as prune_linear_linear
from ._functions import rebuild_module as rebuild_module
from ._lstm import (
    prune_lstm_output_layernorm_linear as prune_lstm_output_layernorm_linear,
)
from ._lstm import prune_lstm_output_linear as prune_lstm_output_linear
from ._match import match_patterns as match_patterns
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
