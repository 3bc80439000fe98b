"""Recurrence kernels. Each `*_ref` function is the plain PyTorch reference the fast paths are tested against."""
