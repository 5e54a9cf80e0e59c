"""Per-layer probes: which layer of an upstream linearly encodes which label.

:func:`probe_layers` fits one linear classifier per stored layer (``ridge`` from
sufficient statistics, :class:`ProbeStats`; ``logistic``: batched softmax) and scores
it on grouped held-out folds (:func:`probe_folds`), with control tasks on request.
The maths and the submodules: ``docs/probes.md``.
"""

from .folds import SPLITS, UnseenClassWarning, control_labels, probe_folds, resolve_split
from .layers import METHODS, RidgeOptions, probe_layers
from .logistic import LogisticOptions
from .ridge import LAMBDAS
from .stats import ProbeStats
from .targets import LEVELS

__all__ = [
    "LAMBDAS",
    "LEVELS",
    "METHODS",
    "SPLITS",
    "LogisticOptions",
    "ProbeStats",
    "RidgeOptions",
    "UnseenClassWarning",
    "control_labels",
    "probe_folds",
    "probe_layers",
    "resolve_split",
]
