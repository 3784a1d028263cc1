"""Data: evaluation and calibration splits, and randomised inputs for resampling."""
