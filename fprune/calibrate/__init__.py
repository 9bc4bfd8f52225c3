"""Calibration-aware pruning: statistics gathered over a few batches, and the criteria that
read them.

Pipeline: :func:`collect_statistics` (a frozen :class:`Statistics`, saved and loaded with
safetensors) -> a criterion (:func:`activation`, :func:`wanda_sp`, :func:`flap`,
:func:`taylor`) given to :func:`fprune.group_masks` (``criterion=``, with
``global_ranking="standardized"`` for FLAP's per-layer widths) -> :func:`fprune.apply_prune`
(``compensate=statistics`` adds the removed channels' mean contribution to the next biases).
Or all in one: ``fprune.prune_channels(model, level, calibration=batches, criterion="flap")``.
"""

from ..groups._records import GroupCriterion as GroupCriterion
from ._criteria import CRITERIA as CRITERIA
from ._criteria import activation as activation
from ._criteria import flap as flap
from ._criteria import taylor as taylor
from ._criteria import wanda_sp as wanda_sp
from ._statistics import Batch as Batch
from ._statistics import Loss as Loss
from ._statistics import Moments as Moments
from ._statistics import Statistics as Statistics
from ._statistics import collect_statistics as collect_statistics
