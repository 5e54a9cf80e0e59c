"""Hugging Face ``transformers`` speech models (:data:`TRANSFORMERS_FAMILIES`, Whisper's
encoder) as s3prl upstreams, and :func:`load_transformers` from a folder or the hub. Hidden
states, padding and waveform normalisation: ``docs/upstreams.md``.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
from torch.nn.utils.rnn import pad_sequence

from ..align import conv_lengths, expected_lengths
from ..interface import AbsUpstream, check_wavs
from ..models import length_mask
from ._common import FixedUpstream, normalize_waveforms, seeded
from ._hub import AS_GIVEN, RANDOM_WEIGHTS, hf_cache_dir, offline

__all__ = ["TRANSFORMERS_FAMILIES", "TransformersUpstream", "WhisperEncoderUpstream",
           "from_transformers", "from_whisper", "is_transformers_model", "load_transformers"]

TRANSFORMERS_FAMILIES = ("wav2vec2", "hubert", "wavlm", "data2vec-audio", "wav2vec2-conformer")
"""``config.model_type`` of the models :func:`from_transformers` wraps."""

_MASK_SAFE = ("wav2vec2", "hubert", "wavlm")
"""Families whose ``feat_extract_norm="layer"`` models are batch invariant with HF's
attention mask (tests/test_transformers.py checks each family either way)."""


def is_transformers_model(obj) -> bool:
    """True for a ``transformers.PreTrainedModel`` (checked without importing transformers)."""
    return isinstance(obj, nn.Module) and hasattr(obj, "config") and any(
        (c.__module__ or "").startswith("transformers.") for c in type(obj).__mro__)


class _HFUpstream(FixedUpstream):
    """What both wrappers share: ``upstream_layers`` picks HF's hidden states, and each
    returned one is zero past its utterance's frames."""

    def _pick_layers(self, layers, n: int, who: str) -> int:
        if isinstance(layers, str):
            if layers != "all":
                raise ValueError(f"{who}: upstream_layers must be 'all' or a list of "
                                 f"hidden-state indices, got {layers!r}")
            ids = list(range(n))
        else:
            try:
                ids = [int(i) for i in layers]
            except TypeError:
                raise TypeError(f"{who}: upstream_layers must be 'all' or a list of ints, got "
                                f"{layers!r}") from None
            for i in ids:
                if not -n <= i < n:
                    raise ValueError(f"{who}: layer {i} out of range for {n} hidden states "
                                     f"(0..{n - 1}, negative from the end)")
            ids = [i % n for i in ids]
            if not ids or len(set(ids)) != len(ids):
                raise ValueError(f"{who}: upstream_layers must be distinct and not empty, got "
                                 f"{list(layers)}")
        self._layer_ids = ids
        return len(ids)

    layer_ids = property(lambda self: list(self._layer_ids),
                         doc="Which of HF's hidden states each returned one is.")

    def _picked(self, hidden_states, frames: torch.Tensor):
        """The picked hidden states up to the longest utterance, zero past each one's
        ``frames``; and a copy of ``frames`` for each."""
        t = int(frames.max())
        valid = length_mask(frames, t)[..., None]
        all_hs = [hidden_states[i][:, :t].to(frames.device) * valid for i in self._layer_ids]
        return all_hs, [frames.clone() for _ in all_hs]


class TransformersUpstream(_HFUpstream):
    """A Hugging Face model of :data:`TRANSFORMERS_FAMILIES` (or a ``*ForCTC`` /
    ``*ForSequenceClassification`` head, whose base model becomes the submodule, mode and
    device as they are) as an s3prl upstream (``docs/upstreams.md``): ``upstream_layers``
    ``"all"`` (``num_hidden_layers + 1``) or indices (negative from the end);
    ``normalize_waveform`` (kept as ``normalize``): the checkpoint's ``do_normalize``."""

    def __init__(self, model: nn.Module, *, upstream_layers: Union[str, Sequence[int]] = "all",
                 normalize_waveform: bool = False, name: Optional[str] = None):
        super().__init__()
        if not is_transformers_model(model):
            raise TypeError(f"from_transformers: expected a transformers model, got "
                            f"{type(model).__name__}")
        base = getattr(model, "base_model", model)
        config = base.config
        kind = getattr(config, "model_type", None)
        if kind == "whisper":
            raise TypeError("from_transformers: a Whisper model has an encoder-decoder; use "
                            "s3viz.upstreams.from_whisper (get_upstream does so itself)")
        if kind not in TRANSFORMERS_FAMILIES or not hasattr(base, "feature_extractor"):
            raise TypeError(f"from_transformers: {type(model).__name__} (model_type {kind!r}) "
                            f"is not one of the supported families {TRANSFORMERS_FAMILIES}")
        if not isinstance(normalize_waveform, bool):
            raise TypeError(f"normalize_waveform must be True or False, got "
                            f"{normalize_waveform!r}")
        self.model = base
        self.model_type = kind
        self.normalize = normalize_waveform  # (the attribute keeps its name: cache keys)
        n = self._pick_layers(upstream_layers, int(config.num_hidden_layers) + 1,
                              "from_transformers")
        self._behind_convolutions(zip(config.conv_kernel, config.conv_stride), n,
                                  config.hidden_size)
        self.uses_attention_mask = (getattr(config, "feat_extract_norm", "group") == "layer"
                                    and kind in _MASK_SAFE)
        self.name = name or getattr(config, "_name_or_path", "") or kind
        self.weights = AS_GIVEN  # load_transformers says "pretrained: ..." or "random ..."

    def extra_repr(self) -> str:
        return (f"name={self.name!r}, weights={self.weights!r}, model_type={self.model_type!r}, "
                f"num_layer={self.num_layer}, attention_mask={self.uses_attention_mask}")

    def forward(self, wavs: torch.Tensor, wavs_len: torch.Tensor
                ) -> Tuple[List[torch.Tensor], List[torch.Tensor]]:
        wavs, wavs_len = check_wavs(wavs, wavs_len, who=f"from_transformers({self.name})")
        field = self._fields[0]
        short = [i for i, n in enumerate(wavs_len.tolist()) if n < field]
        if short:
            raise ValueError(f"{self.name}: utterance(s) {short} are shorter than the "
                             f"{field}-sample receptive field: no frame")
        if self.normalize:  # as HF's feature extractor does it: variance eps 1e-7
            wavs = normalize_waveforms(wavs, wavs_len, eps=1e-7)
        frames = conv_lengths(wavs_len, self.conv_layers)  # (an adapter acts after them)
        param = next(self.model.parameters(), None)
        if param is not None and param.dtype != wavs.dtype:  # e.g. a float16 checkpoint
            wavs = wavs.to(param.dtype)
        if self.uses_attention_mask:
            t = int(wavs_len.max())
            mask = length_mask(wavs_len, t)
            with warnings.catch_warnings():
                # HF's WavLM attention mixes a bool padding mask with its float position
                # bias, which torch deprecates; the result is right (tests compare it)
                warnings.filterwarnings("ignore", message="Support for mismatched key_padding_mask")
                out = self.model(wavs[:, :t] * mask, attention_mask=mask.long(),
                                 output_hidden_states=True)
            return self._picked(out.hidden_states, frames)
        per = [[None] * len(wavs_len) for _ in self._layer_ids]
        lens = wavs_len.tolist()
        for n in sorted(set(lens)):  # one unpadded forward per length
            idx = [b for b, m in enumerate(lens) if m == n]
            out = self.model(wavs[idx, :n], output_hidden_states=True)
            for k, i in enumerate(self._layer_ids):
                for j, b in enumerate(idx):
                    per[k][b] = out.hidden_states[i][j]
        # each item has exactly its utterance's frames: zero-padding stacks them
        all_hs = [pad_sequence(items, batch_first=True) for items in per]
        return all_hs, [frames.clone() for _ in all_hs]


def from_transformers(model: nn.Module, *, upstream_layers: Union[str, Sequence[int]] = "all",
                      normalize_waveform: bool = False, name: Optional[str] = None
                      ) -> AbsUpstream:
    """Wrap a transformers speech model: :class:`TransformersUpstream`, or for Whisper
    :class:`WhisperEncoderUpstream`."""
    config = getattr(getattr(model, "base_model", model), "config", None)
    if getattr(config, "model_type", None) == "whisper":
        if normalize_waveform:
            raise ValueError("normalize_waveform applies to wav2vec2-family models; Whisper's "
                             "feature extractor makes its own log-mel features")
        return from_whisper(model, upstream_layers=upstream_layers, name=name)
    return TransformersUpstream(model, upstream_layers=upstream_layers,
                                normalize_waveform=normalize_waveform, name=name)


# --------------------------------------------------------------------------- Whisper


class WhisperEncoderUpstream(_HFUpstream):
    """The encoder of a Hugging Face ``WhisperModel``, ``WhisperForConditionalGeneration``
    or ``WhisperEncoder`` as an s3prl upstream: ``encoder_layers + 1`` hidden states at 320
    samples per frame, each utterance alone in its window (``docs/upstreams.md``,
    "Whisper"; longer ones are refused), lengths counting frames of real audio
    (:meth:`frames`). ``feature_extractor`` defaults to one built for the model."""

    def __init__(self, model: nn.Module, *, feature_extractor=None,
                 upstream_layers: Union[str, Sequence[int]] = "all",
                 name: Optional[str] = None):
        super().__init__()
        if not is_transformers_model(model):
            raise TypeError(f"from_whisper: expected a transformers Whisper model, got "
                            f"{type(model).__name__}")
        encoder = model.get_encoder() if hasattr(model, "get_encoder") else model
        config = encoder.config
        if getattr(config, "model_type", None) != "whisper" or not hasattr(encoder, "conv1"):
            raise TypeError(f"from_whisper: {type(model).__name__} is not a Whisper model")
        self.encoder = encoder
        positions = int(config.max_source_positions)
        mel_frames = 2 * positions
        seconds = mel_frames * 160 / 16000
        if feature_extractor is None:
            from transformers import WhisperFeatureExtractor

            if seconds != int(seconds):
                raise ValueError(f"from_whisper: max_source_positions={positions} gives a "
                                 f"{seconds} s window; Whisper's feature extractor needs whole "
                                 "seconds (a multiple of 50 positions)")
            feature_extractor = WhisperFeatureExtractor(feature_size=int(config.num_mel_bins),
                                                        chunk_length=int(seconds))
        if int(feature_extractor.nb_max_frames) != mel_frames:
            raise ValueError(f"from_whisper: the feature extractor makes "
                             f"{feature_extractor.nb_max_frames} mel frames but the encoder "
                             f"takes {mel_frames}")
        self.feature_extractor = feature_extractor
        self.window_samples = int(feature_extractor.n_samples)
        n = self._pick_layers(upstream_layers, int(config.encoder_layers) + 1, "from_whisper")
        self._sizes, self._rates = [int(config.d_model)] * n, [320] * n
        self.name = name or getattr(config, "_name_or_path", "") or "whisper"
        self.weights = AS_GIVEN

    def extra_repr(self) -> str:
        return (f"name={self.name!r}, weights={self.weights!r}, num_layer={self.num_layer}, "
                f"window={self.window_samples / 16000:g} s")

    @staticmethod
    def frames(wavs_len: torch.Tensor) -> torch.Tensor:
        """Encoder frames of real audio for ``wavs_len`` samples: ``ceil(L / 160)`` mel
        frames, then the stride-2 convolution: exactly ``ceil(L / 320)``."""
        return expected_lengths(wavs_len, 320, "ceil")

    def forward(self, wavs: torch.Tensor, wavs_len: torch.Tensor
                ) -> Tuple[List[torch.Tensor], List[torch.Tensor]]:
        wavs, wavs_len = check_wavs(wavs, wavs_len, who=f"from_whisper({self.name})")
        long = [i for i, n in enumerate(wavs_len.tolist()) if n > self.window_samples]
        if long:
            raise ValueError(f"{self.name}: utterance(s) {long} are longer than Whisper's "
                             f"{self.window_samples / 16000:g} s window; split them first")
        empty = [i for i, n in enumerate(wavs_len.tolist()) if n == 0]
        if empty:
            raise ValueError(f"{self.name}: utterance(s) {empty} have no samples")
        audio = [wavs[b, :n].detach().float().cpu().numpy()
                 for b, n in enumerate(wavs_len.tolist())]
        feats = self.feature_extractor(audio, sampling_rate=16000, return_tensors="pt",
                                       padding="max_length").input_features
        param = next(self.encoder.parameters())
        out = self.encoder(feats.to(device=param.device, dtype=param.dtype),
                           output_hidden_states=True)
        return self._picked(out.hidden_states, self.frames(wavs_len).to(wavs.device))


def from_whisper(model: nn.Module, *, feature_extractor=None,
                 upstream_layers: Union[str, Sequence[int]] = "all", name: Optional[str] = None
                 ) -> WhisperEncoderUpstream:
    """Wrap a Whisper model's encoder: see :class:`WhisperEncoderUpstream`."""
    return WhisperEncoderUpstream(model, feature_extractor=feature_extractor,
                                  upstream_layers=upstream_layers, name=name)


# --------------------------------------------------------------------------- loading


def _snapshots(repo_id: str) -> Tuple[str, dict, set]:
    """huggingface_hub's cache folder of a repository, each snapshot's files, its blobs."""
    root = os.path.join(hf_cache_dir(), "models--" + repo_id.replace("/", "--"))

    def names(folder):
        return set(os.listdir(folder)) if os.path.isdir(folder) else set()

    snaps = {c: {str(p.relative_to(os.path.join(root, "snapshots", c)))
                 for p in Path(root, "snapshots", c).rglob("*") if not p.is_dir()}
             for c in names(os.path.join(root, "snapshots"))}
    return root, snaps, names(os.path.join(root, "blobs"))


def _repo_files(repo_id: str, revision: Optional[str], what: str) -> Tuple[list, list]:
    """``(configs, weight files)`` loading ``repo_id`` needs, from the hub's file list
    (safetensors when there are some, else ``pytorch_model*.bin``)."""
    from huggingface_hub import HfApi, constants

    try:
        info = HfApi().model_info(repo_id, revision=revision or "main")
    except Exception as err:  # HTTP, connection and repository errors vary
        raise OSError(f"{what}: could not be found on {constants.ENDPOINT} "
                      f"({type(err).__name__}: {err})") from None
    names = [s.rfilename for s in (info.siblings or [])]
    weight_files = [n for n in names if n.endswith(".safetensors") or
                    n == "model.safetensors.index.json"] or [
        n for n in names if n.startswith("pytorch_model") and n.endswith((".bin", ".bin.index.json"))]
    if "config.json" not in names or not weight_files:
        raise OSError(f"{what}: the repository has no config.json and weights (safetensors or "
                      f"pytorch_model.bin) at {info.sha}; files: {names[:20]}")
    return [n for n in ("config.json", "preprocessor_config.json") if n in names], weight_files


def _fetch(repo_id: str, revision: Optional[str], names: list, what: str, forget) -> None:
    """Download ``names`` of ``repo_id`` into huggingface_hub's cache; a failure names the
    file, with what ``forget`` cleared."""
    from huggingface_hub import hf_hub_download

    for name in names:
        try:
            # by the name asked for (not the commit), so the cache records the ref, and
            # offline loads of the same name find it
            hf_hub_download(repo_id, name, revision=revision or "main")
        except Exception as err:
            raise OSError(forget(f"{what}: downloading {name} failed ({type(err).__name__}: "
                                 f"{err})")) from None


_UNUSED_IN_EVAL = ("masked_spec_embed",)
"""Parameters a checkpoint may leave out that extraction never uses (the mask embedding
is applied only while training, when ``mask_time_prob > 0``)."""


def _cached_commit(repo_id: str, revision: Optional[str]) -> Optional[str]:
    """The commit of ``revision`` that huggingface_hub's cache holds, or None."""
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(repo_id, "config.json", revision=revision)
    return os.path.basename(os.path.dirname(found)) if isinstance(found, str) else None


def _forget_download(repo_id: str, before: Tuple[str, dict, set]) -> List[str]:
    """Remove from the cache what this call downloaded of ``repo_id`` (new snapshots, new
    files of old ones, new blobs; links removed, never followed) and return it."""
    from huggingface_hub import scan_cache_dir

    from .._fs import OwnedFolder

    root, snaps, blobs = _snapshots(repo_id)
    new = sorted(set(snaps) - set(before[1]))
    if new:
        scan_cache_dir(hf_cache_dir()).delete_revisions(*new).execute()
    gone = [(os.path.join(root, "snapshots", c), rel) for c in sorted(set(snaps) & set(before[1]))
            for rel in sorted(snaps[c] - before[1][c])]
    gone += [(os.path.join(root, "blobs"), name)  # new blobs no revision kept
             for name in sorted((_snapshots(repo_id)[2] & blobs) - before[2])]
    for folder, rel in gone:
        OwnedFolder(folder, "huggingface_hub's cache", create=False).unlink(rel)
    return [os.path.join(root, "snapshots", c) for c in new] + [os.path.join(*g) for g in gone]


def load_transformers(name_or_path: str, *, pretrained: bool = True,
                      revision: Optional[str] = None, upstream_layers="all",
                      seed: int = 0, repository: bool = False, **kwargs) -> AbsUpstream:
    """An upstream from a ``save_pretrained`` folder or a Hugging Face repository id
    (``repository=True``: only an id), through huggingface_hub's cache, no hub code run;
    what a failed load downloaded is removed again (``docs/upstreams.md``). ``kwargs``:
    ``normalize_waveform`` (default: the checkpoint's ``do_normalize``) or ``name``."""
    try:
        import transformers
    except ImportError as err:
        raise ImportError("Hugging Face models need transformers: pip install 's3viz[hf]' "
                          "(or pip install transformers)") from err

    if revision is not None and (not isinstance(revision, str) or not revision.strip()):
        raise TypeError(f"revision must be a branch, tag or commit name, got {revision!r}")
    if repository:
        from huggingface_hub.utils import HFValidationError, validate_repo_id

        try:
            validate_repo_id(str(name_or_path))
        except HFValidationError as err:
            raise ValueError(f"'hf:{name_or_path}' is not a Hugging Face repository id "
                             f"('<owner>/<name>'): {err}") from None
    folder = not repository and os.path.isdir(os.path.expanduser(str(name_or_path)))
    if folder:
        if revision is not None:
            raise ValueError(f"revision={revision!r} applies to a Hugging Face repository; "
                             f"{name_or_path!r} is a folder (its files are what is loaded)")
        name_or_path = os.path.abspath(os.path.expanduser(str(name_or_path)))
    var = offline()
    common = dict(revision=revision, trust_remote_code=False,
                  local_files_only=folder or var is not None)
    before = None if folder else _snapshots(name_or_path)
    what = (f"the folder {name_or_path!r}" if folder
            else f"Hugging Face model {name_or_path!r}" + (f" (revision {revision!r})"
                                                            if revision else ""))

    def forget(err_text: str) -> str:
        gone = [] if before is None else _forget_download(name_or_path, before)
        if gone:
            return err_text + (f"; what this call downloaded was removed from the cache "
                               f"({', '.join(gone)})")
        commit = None if folder else _cached_commit(name_or_path, revision)
        if commit:  # it was cached before this call: left as it is, but named
            snap = os.path.join(_snapshots(name_or_path)[0], "snapshots", commit)
            return err_text + (f"; the files were already in huggingface_hub's cache ({snap}) "
                               "and are left there: delete that revision (hf cache delete, or "
                               "huggingface-cli delete-cache) to download it again")
        return err_text

    weight_files = []
    if not folder and var is None:
        config_files, weight_files = _repo_files(name_or_path, revision, what)
        # the configuration first: a model s3viz refuses costs no weights download
        _fetch(name_or_path, revision, config_files, what, forget)
        common.update(local_files_only=True)
    try:
        config = transformers.AutoConfig.from_pretrained(name_or_path, **common)
    except (OSError, ValueError) as err:
        if folder:
            if os.path.isfile(os.path.join(name_or_path, "config.json")):
                raise ValueError(f"transformers cannot read {name_or_path}/config.json: "
                                 f"{err}") from None
            raise ValueError(f"{name_or_path!r} is a folder without config.json; save the model "
                             "with model.save_pretrained(folder)") from None
        if var is not None:
            raise FileNotFoundError(
                f"{what} is not in huggingface_hub's cache ({hf_cache_dir()}) and {var} is "
                "set, so nothing is downloaded. Fetch it where there is a network with\n"
                f"    hf download {name_or_path}" + (f" --revision {revision}" if revision
                                                     else "") + "\n"
                "and copy that cache folder here (or point HF_HUB_CACHE at it), unset "
                f"{var} to download it now, or pass the folder of a model saved with "
                "save_pretrained") from None
        raise OSError(forget(f"{what}: could not be loaded ({type(err).__name__}: {err})")
                      ) from None
    kind = getattr(config, "model_type", None)
    if kind not in TRANSFORMERS_FAMILIES + ("whisper",):
        raise ValueError(forget(f"{name_or_path!r} is a {kind!r} model; s3viz wraps "
                                f"{TRANSFORMERS_FAMILIES + ('whisper',)}"))
    if getattr(config, "auto_map", None):
        # the repository's own model code: without it transformers would build its
        # built-in class of that model_type, which need not be the model the weights are for
        raise ValueError(forget(f"{what}: its config.json names model code of its own "
                                f"(auto_map {dict(config.auto_map)}), and s3viz runs no code "
                                "from a hub (trust_remote_code=False); load the model yourself "
                                "where you trust that code and pass the object to get_upstream"))
    if pretrained:
        # (none to fetch from a folder, or offline: the cache answers)
        _fetch(name_or_path, revision, weight_files, what, forget)
        try:
            model, info = transformers.AutoModel.from_pretrained(
                name_or_path, weights_only=True, output_loading_info=True, **common)
        except Exception as err:  # download, safetensors and unpickling errors vary
            raise OSError(forget(f"{what}: the weights could not be loaded "
                                 f"({type(err).__name__}: {err})")) from None
        missing = [k for k in (info or {}).get("missing_keys", [])
                   if not k.endswith(_UNUSED_IN_EVAL)]
        bad = [str(k) for k in (info or {}).get("mismatched_keys", [])]
        if missing or bad:
            raise ValueError(forget(
                f"{what}: the weights file does not hold the whole model: {len(missing)} "
                f"parameter(s) missing (e.g. {missing[:4]}) and {len(bad)} of another shape "
                f"({bad[:4]}); transformers would leave those random, so the upstream would "
                "not be the trained model. Save the whole model with save_pretrained"))
        commit = None if folder else _cached_commit(name_or_path, revision)
        weights = (f"pretrained: folder {name_or_path}" if folder else
                   f"pretrained: hf:{name_or_path}" + (f"@{commit[:12]}" if commit else ""))
    else:
        model = seeded(lambda: transformers.AutoModel.from_config(config), seed)
        weights = f"{RANDOM_WEIGHTS} (seed {seed}; the architecture of {name_or_path})"
    model.eval()
    name = kwargs.pop("name", None) or str(name_or_path)
    whisper = kind == "whisper"
    normalize = None if whisper else kwargs.pop("normalize_waveform", None)
    if kwargs:
        raise TypeError(f"unexpected arguments{' for a Whisper model' if whisper else ''}: "
                        f"{sorted(kwargs)}")
    fe = None
    if whisper or normalize is None:
        try:
            fe = (transformers.WhisperFeatureExtractor if whisper
                  else transformers.AutoFeatureExtractor).from_pretrained(name_or_path, **common)
        except (OSError, ValueError):
            # Whisper's is built from the config instead, as the released checkpoints ship it
            if not whisper:
                warnings.warn(
                    f"{name_or_path}: no feature extractor config (preprocessor_config.json), "
                    "so whether the model expects normalised waveforms is unknown: they are NOT "
                    "normalised. Pass normalize_waveform=True if it does (wav2vec2-large-lv60, "
                    "XLS-R, data2vec ...), or save the feature extractor next to the model "
                    "(Wav2Vec2FeatureExtractor(...).save_pretrained(folder))", stacklevel=3)
    if whisper:
        up = from_whisper(model, feature_extractor=fe, upstream_layers=upstream_layers, name=name)
    else:
        normalize = bool(getattr(fe, "do_normalize", False)) if normalize is None else normalize
        up = TransformersUpstream(model, upstream_layers=upstream_layers,
                                  normalize_waveform=normalize, name=name)
    up.weights = weights
    return up
