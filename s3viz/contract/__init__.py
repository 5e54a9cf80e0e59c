"""Contract checks: run an object on generated inputs and report every violation.

One checker per seed interface of :mod:`s3viz.interface`, each returning a
:class:`ContractReport`. How the checks run, their inputs and tolerances:
``docs/contract.md``.
"""

from .featurizer import check_featurizer
from .models import check_frame_model, check_utterance_model
from .report import STATUSES, ContractReport, ContractViolation
from .upstream import check_upstream

__all__ = [
    "STATUSES",
    "ContractReport",
    "ContractViolation",
    "check_featurizer",
    "check_frame_model",
    "check_upstream",
    "check_utterance_model",
]
