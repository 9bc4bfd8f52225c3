"""The fprune version (plans record the one that made them)."""

__version__ = "0.1.0"
