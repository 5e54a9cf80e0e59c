"""Per-layer probes: which layer of an upstream linearly encodes which label.

:func:`probe_layers` fits one linear classifier per stored layer of a
:class:`~s3viz.store.LayerStore` (``ridge``: closed form from sufficient
statistics, :class:`ProbeStats`; ``logistic``: batched softmax) and scores it on
grouped held-out folds (:func:`probe_folds`), with Hewitt & Liang's control tasks
(:func:`control_labels`) on request. Submodules: ``stats``, ``folds``, ``targets``
(the label rules and :class:`~.targets.ProbeTask`, shared with featurizers and
streaming), ``ridge``, ``logistic``, ``layers``, ``weighted`` (``WeightedScorer``).
The maths: ``docs/probes.md``.
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
