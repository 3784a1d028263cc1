"""Ablation: hooks on the pre-out, replacement values per method, and the pruning schedule."""
