"""One LightningModule per model family; the shared test/calibration logic lives in base.py."""
