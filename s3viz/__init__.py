"""s3viz: Jupyter-first analysis of self-supervised speech models (s3prl interfaces).

The public API is flat: ``s3viz.extract``, ``s3viz.probe_layers``,
``s3viz.check_upstream`` ... Submodules ``s3viz.data``, ``s3viz.audio``,
``s3viz.upstreams``, ``s3viz.plot`` and ``s3viz.widgets`` hold the rest.
Names are imported lazily, so ``import s3viz`` stays cheap.
"""

from __future__ import annotations

from ._lazy import lazy_exports

__version__ = "0.1.0"

# public name -> module that defines it
_EXPORTS = {
    # seed interfaces
    "AbsUpstream": "interface",
    "AbsFeaturizer": "interface",
    "AbsFrameModel": "interface",
    "AbsUtteranceModel": "interface",
    # contract checks
    "check_upstream": "contract",
    "check_featurizer": "contract",
    "check_frame_model": "contract",
    "check_utterance_model": "contract",
    "ContractReport": "contract",
    "ContractViolation": "contract",
    # extraction
    "extract": "extraction",
    "LayerStore": "store",
    # probes and similarity
    "probe_layers": "probe",
    "LogisticOptions": "probe", "RidgeOptions": "probe", "CCAOptions": "similarity",
    "CKAOptions": "similarity",
    "ProbeStats": "probe",
    "layer_similarity": "similarity",
    "stream_analysis": "stream",
    "abx_layers": "abx",
    "unit_quality": "measures.units",
    "cca_layers": "measures.cca",
    "segment_table": "segments",
    # featurizer weights
    "WeightedSumFeaturizer": "featurizers",
    "WeightedScorer": "probe.weighted",
    "train_featurizer": "featurizer_training", "TrainOptions": "featurizer_training",
    "load_featurizer_weights": "checkpoints",
    # length alignment
    "expected_lengths": "align",
    "frame_timeline": "align",
    "length_report": "align",
    "summarize_lengths": "align",
    # notebooks
    "notebook_threads": "_device",
    # frame vs utterance
    "compare_frame_utterance": "compare",
    # error bars
    "compare_scores": "paired",
    # attention heads
    "attention_stats": "attention", "attention_maps": "attention",
}

_SUBMODULES = ("abx", "align", "attention", "audio", "checkpoints", "compare", "contract", "data",
               "distributed", "extraction", "measures", "featurizer_training", "featurizers", "interface",
               "models", "paired", "plot", "probe", "segments", "similarity", "store", "stream", "teach",
               "units", "upstreams", "widgets", "zoo")

__all__ = sorted(_EXPORTS) + ["__version__"]


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, _SUBMODULES)
