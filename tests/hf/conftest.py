"""Hugging Face tests need the optional extra (``pip install fprune[hf]``): skipped without it."""

import pytest

pytest.importorskip("transformers")
