"""Native kernels for XLA:CPU, called through XLA's FFI (see cpu_attention)."""
