"""Plans: what a pruning does, as data. :func:`make_plan` records it (typed, frozen, JSON in
and out), :func:`apply_plan` replays it on the model, :func:`load_pruned` rebuilds the pruned
architecture on the meta device and loads pruned weights into it, and
:func:`prune_checkpoint` streams a safetensors checkpoint through it, tensor by tensor."""

from .._util.tensor_ops import Compensate as Compensate
from .._util.tensor_ops import Fold as Fold
from .._util.tensor_ops import Full as Full
from .._util.tensor_ops import MeanTerm as MeanTerm
from .._util.tensor_ops import Scale as Scale
from .._util.tensor_ops import Take as Take
from .._util.tensor_ops import TensorOp as TensorOp
from .._util.tensor_ops import Zeros as Zeros
from ._make import make_plan as make_plan
from ._make import plan_channels as plan_channels
from ._records import SCHEMA as SCHEMA
from ._records import EllipsisValue as EllipsisValue
from ._records import NodeArgs as NodeArgs
from ._records import NodeRef as NodeRef
from ._records import Plan as Plan
from ._records import SliceValue as SliceValue
from ._records import Value as Value
from ._replay import apply_plan as apply_plan
from ._checkpoint import CheckpointReport as CheckpointReport
from ._checkpoint import CheckpointWeights as CheckpointWeights
from ._checkpoint import checkpoint_weights as checkpoint_weights
from ._checkpoint import prune_checkpoint as prune_checkpoint
from ._load import Weights as Weights
from ._load import load_pruned as load_pruned
