"""Maps of single units: every head (or layer) ablated alone by every method (``units``: the points,
their masks and values; ``step``: one layer's evaluations from one unablated forward pass per batch)."""
