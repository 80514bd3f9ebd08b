"""Moved to :mod:`vseam_run.modulation.learned` (one module per policy); kept so old imports work."""

from vseam_run.modulation.learned import *  # noqa: F401,F403
from vseam_run.modulation.learned import EpochLog, LearnedScales, PositionHeadEdit, edits_for, fit_scales  # noqa: F401
