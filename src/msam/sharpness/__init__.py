"""Post-hoc sharpness: the top Hessian eigenvalue and trace of a trained run's loss."""

from msam.sharpness.run import default_settings, measure_run

__all__ = ["default_settings", "measure_run"]
