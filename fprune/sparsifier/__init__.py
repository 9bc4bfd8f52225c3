"""torch.ao's structured-pruning workflow over fprune: ``prepare`` / ``step`` / ``prune``.

Code written for ``torch.ao.pruning._experimental.pruner`` switches by changing its import::

    from fprune.sparsifier import BaseStructuredSparsifier, SaliencyPruner

Masks come from fprune's pure mask functions and pruning from ``fprune.match_patterns`` and
``fprune.apply_prune``; only the sparsifier object is stateful. Unlike torch.ao, ``prune()``
returns a new model and leaves the prepared model as it was.
"""

from ._base import BaseStructuredSparsifier as BaseStructuredSparsifier
from ._base import FakeStructuredSparsity as FakeStructuredSparsity
from ._base import masked_weight_and_mask as masked_weight_and_mask
from ._base import sparsity_level as sparsity_level
from ._pruners import FPGMPruner as FPGMPruner
from ._pruners import LSTMSaliencyPruner as LSTMSaliencyPruner
from ._pruners import SaliencyPruner as SaliencyPruner
