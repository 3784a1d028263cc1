"""Lightning callbacks: calibration statistics and result writing."""

from ablate_lit.callbacks.calibration import CalibrationCallback
from ablate_lit.callbacks.results import ResultWriter

__all__ = ["CalibrationCallback", "ResultWriter"]
