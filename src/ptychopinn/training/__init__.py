"""Training: Lightning DataModule, LightningModule, trainer wiring and ``fit``."""
