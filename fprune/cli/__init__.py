"""The ``fprune`` command line: ``fprune inspect MODULE:FACTORY`` shows a model's channel groups,
parameters and FLOPs; ``fprune prune MODULE:FACTORY --level 0.3 --out pruned.safetensors``
prunes it with :func:`fprune.prune_channels` and writes the pruned copy's weights.
``python -m fprune COMMAND ...`` runs the same commands."""

from ._main import main as main
