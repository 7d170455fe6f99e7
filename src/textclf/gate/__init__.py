"""Promotion gate: the pure decision (``decision``), its statistics (``stats``) and behavioural checks.

The registry layer (MLflow aliases) builds :class:`CandidateEvidence` for challenger and champion,
calls :func:`decide` and acts on ``Decision.promote``.
"""

from textclf.gate.behaviour import (
    DEFAULT_CASES,
    BehaviourCase,
    BehaviourFailure,
    BehaviourResult,
    cases_for,
    load_cases,
    run_behaviour_checks,
)
from textclf.gate.decision import (
    BaselineMetrics,
    CandidateEvidence,
    Comparison,
    CriterionResult,
    Decision,
    ServingMeasurements,
    SliceComparison,
    decide,
    slices_from_masks,
)

__all__ = [
    "DEFAULT_CASES",
    "BaselineMetrics",
    "BehaviourCase",
    "BehaviourFailure",
    "BehaviourResult",
    "CandidateEvidence",
    "Comparison",
    "CriterionResult",
    "Decision",
    "ServingMeasurements",
    "SliceComparison",
    "cases_for",
    "decide",
    "load_cases",
    "run_behaviour_checks",
    "slices_from_masks",
]
