"""Where a model's neurons are: tested paths, discovery by structure, and the check of every hook
point on one forward pass, which leaves the model as it was."""
