"""mSAM: micro-batch-averaged sharpness-aware minimization.

The library API for your own training loop: msam.MSAM (see msam/api.py and the README's
"mSAM in your own training loop"); msam.GibbsReweighting makes it RW-SAM.
"""

from msam.api import MSAM, UsageError
from msam.methods.reweight import GibbsReweighting

__version__ = "0.1.0"
__all__ = ["MSAM", "UsageError", "GibbsReweighting"]

