"""The ``fprune`` command line: ``fprune inspect MODULE:FACTORY`` shows a model's channel groups,
parameters and FLOPs; ``fprune prune MODULE:FACTORY --level 0.3 --out pruned.safetensors
--plan plan.json`` prunes it with :func:`fprune.prune_channels` and writes the pruned copy's
weights and / or the plan of the pruning (``--plot widths.png``: its layers' widths);
``fprune apply-plan MODULE:FACTORY --plan plan.json --weights W --out pruned.safetensors``
replays a plan on other weights, and ``fprune prune-checkpoint --plan plan.json SRC DST``
streams a safetensors checkpoint through it without building the model.
``python -m fprune COMMAND ...`` runs the same commands."""

from ._main import main as main
