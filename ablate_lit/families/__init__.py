"""The model side of a run: loading (``loading/``), where the neurons are (``locate/``), the hooks on
them (``hooks.py``) and one LightningModule per family (``causal_lm``, ``masked_lm``, ``vision``)."""
