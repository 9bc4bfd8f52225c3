"""Hugging Face ``transformers`` models: pruned like any model (``prune_channels`` exports them
with ``torch.export``; ``apply_prune`` updates the copy's ``config``), saved so that they
reload identical.

``transformers`` is an optional extra (``pip install fprune[hf]``); nothing here imports it.
"""

from ._save import save_pretrained as save_pretrained

__all__ = ["save_pretrained"]
