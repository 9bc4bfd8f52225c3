"""Helpers both engines use: copying and rebuilding modules, the blocked gather, norms,
model checks, running a model without side effects, and the shape-only torch mode."""
