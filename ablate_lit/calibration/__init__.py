"""What the methods are computed from: sweeps over the calibration inputs with recording callbacks
(``callbacks``), the statistics they give (``statistics``), and the on-disk cache of both (``cache``)."""
