"""Federated-learning maths: data splits, models, local training, aggregation rules,
anomaly scores, the root-set loss check, trust scores and simulated attacks.

This package has no chain or storage code. From ztfm_chain it imports only
:mod:`ztfm_chain.updates` and the exceptions.
"""

from ztfm_chain.fl.aggregation import (
    RULES,
    AggregationResult,
    AggregationRule,
    CoordinateMedian,
    Exclusion,
    FedAvg,
    FLTrust,
    MultiKrum,
    TrimmedMean,
    make_rule,
)
from ztfm_chain.fl.anomaly import (
    AnomalyFlag,
    AnomalyScores,
    flag_anomalies,
    score_updates,
)
from ztfm_chain.fl.models import MLP, DigitsMLP, init_mlp_state, mlp_for_parameter_count
from ztfm_chain.fl.training import evaluate, train_local, train_local_many
from ztfm_chain.fl.trust import (
    TrustPolicy,
    apply_penalty,
    behaviour_bps,
    is_quarantined,
    update_trust,
)
from ztfm_chain.fl.validation import (
    RootLossScores,
    flag_root_loss,
    merge_flags,
    root_loss_changes,
)

__all__ = [
    "MLP",
    "RULES",
    "AggregationResult",
    "AggregationRule",
    "AnomalyFlag",
    "AnomalyScores",
    "CoordinateMedian",
    "DigitsMLP",
    "Exclusion",
    "FLTrust",
    "FedAvg",
    "MultiKrum",
    "RootLossScores",
    "TrimmedMean",
    "TrustPolicy",
    "apply_penalty",
    "behaviour_bps",
    "evaluate",
    "flag_anomalies",
    "flag_root_loss",
    "init_mlp_state",
    "is_quarantined",
    "make_rule",
    "merge_flags",
    "mlp_for_parameter_count",
    "root_loss_changes",
    "score_updates",
    "train_local",
    "train_local_many",
    "update_trust",
]
