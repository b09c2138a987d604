"""Time maps, the TrigFlow denoiser around an RF velocity network, guidance, training-time
distributions and samplers (docs/math.md sections 1, 2 and 6)."""

from .denoiser import TrigFlowDenoiser, TrigFlowPrediction, TrigFlowTangent
from .few_step import (DEFAULT_MID_TIMES, DEFAULT_SIGMA_MAX, MAX_STEPS, consistency_rollout, few_step_times,
                       sample_few_step)
from .flow_matching import FlowMatchingSchedule, flow_matching_schedule
from .guidance import ClassifierFreeGuidance
from .teacher_sampling import sample_rf_euler, sample_rf_unipc
from .time import rf_to_trigflow, shift_rf, sigma_to_trigflow, trigflow_to_rf
from .time_sampling import sample_time_dmd, sample_time_scm

__all__ = [
    "DEFAULT_MID_TIMES",
    "DEFAULT_SIGMA_MAX",
    "MAX_STEPS",
    "ClassifierFreeGuidance",
    "FlowMatchingSchedule",
    "TrigFlowDenoiser",
    "TrigFlowPrediction",
    "TrigFlowTangent",
    "consistency_rollout",
    "few_step_times",
    "flow_matching_schedule",
    "rf_to_trigflow",
    "sample_few_step",
    "sample_rf_euler",
    "sample_rf_unipc",
    "sample_time_dmd",
    "sample_time_scm",
    "shift_rf",
    "sigma_to_trigflow",
    "trigflow_to_rf",
]
