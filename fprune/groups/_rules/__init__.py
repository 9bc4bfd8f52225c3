"""The flow rules fprune ships, by family: layers (Linear, Conv, norms, LSTM), layout (view,
permute, cat, split, flatten, pooling reductions), attention (heads, SDPA, matmul,
MultiheadAttention), elementwise (activations, residual adds and products); the default
table that maps ops to them is :func:`default_flow_rules`."""

from ._default import default_flow_rules as default_flow_rules
