"""Tiny random-init models of every architecture, built from configs and saved like real ones, for
tests and smoke configs (``tiny``, ``zoo``)."""
