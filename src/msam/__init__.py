"""mSAM: micro-batch-averaged sharpness-aware minimization."""

__version__ = "0.1.0"
