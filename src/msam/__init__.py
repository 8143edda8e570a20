"""mSAM: micro-batch-averaged sharpness-aware minimization."""

from msam import resolvers

__version__ = "0.1.0"

resolvers.register()
