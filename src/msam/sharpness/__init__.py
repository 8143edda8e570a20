"""Post-hoc sharpness: the top Hessian eigenvalue and trace of a trained run's loss."""

from msam.sharpness.run import measure_run

__all__ = ["measure_run"]
