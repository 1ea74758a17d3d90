"""Pruning steps: `magnitude`, `wanda`, `sparsegpt` and `semi_structured` (N:M with any of their criteria)."""
