"""wav2vec 2.0 / HuBERT / WavLM from torchaudio (or s3prl's converted checkpoints) as s3prl
upstreams: ``N`` transformer layers give ``N + 1`` hidden states, each utterance's the same in
any padded batch. Hidden states, padding and weights: ``docs/upstreams.md``.
"""

from __future__ import annotations

import ast
import os
from pathlib import Path
from typing import List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from .. import _deps
from ..align import conv_lengths
from ..interface import check_wavs
from ..models import length_mask
from ._common import FixedUpstream, normalize_waveforms, seeded
from ._hub import (PRETRAINED_MODELS, RANDOM_WEIGHTS, fetch_torchaudio, resolve_name,
                   torch_hub_checkpoints, torchaudio_base_url)

__all__ = ["TORCHAUDIO_MODELS", "TorchaudioUpstream", "torchaudio_upstream",
           "wav2vec2_hidden_states", "bundle_checkpoint", "from_s3prl_checkpoint"]

TORCHAUDIO_MODELS = {name: spec.ref for name, spec in PRETRAINED_MODELS.items()
                     if spec.source == "torchaudio"}
"""s3viz model name -> ``torchaudio.pipelines`` bundle that defines its architecture and
weights (s3prl's names for them: ``s3viz.upstreams.ALIASES``)."""


# --------------------------------------------------------------------------- computation


def _unwrap(model) -> Tuple[nn.Module, bool]:
    """The bare ``Wav2Vec2Model`` and whether the bundle wrapper normalised waveforms."""
    normalize = False
    # torchaudio.pipelines wraps some models (input layer norm) in a private
    # ``_Wav2Vec2Model`` with ``.model`` and ``.normalize_waveform``.
    if not hasattr(model, "encoder") and isinstance(getattr(model, "model", None), nn.Module):
        normalize = bool(getattr(model, "normalize_waveform", False))
        model = model.model
    enc = getattr(model, "encoder", None)
    if (not isinstance(getattr(getattr(model, "feature_extractor", None), "conv_layers", None),
                       nn.ModuleList)
            or not hasattr(enc, "feature_projection")
            or not hasattr(getattr(enc, "transformer", None), "layers")):
        raise TypeError(
            f"model must be a torchaudio.models.Wav2Vec2Model (feature_extractor.conv_layers, "
            f"encoder.feature_projection, encoder.transformer.layers), got {type(model).__name__}; "
            "build one with torchaudio.models.hubert_base() or a torchaudio.pipelines bundle")
    return model, normalize


def _model_conv_layers(model: nn.Module) -> Tuple[Tuple[int, int], ...]:
    return tuple((int(b.kernel_size), int(b.stride)) for b in model.feature_extractor.conv_layers)


def _masked_group_norm(x: torch.Tensor, x_len: torch.Tensor, norm: nn.GroupNorm) -> torch.Tensor:
    """``norm`` of a ``(batch_size, channels, seq_len)`` convolution output whose statistics
    use only each utterance's ``x_len`` valid frames: on those, ``norm`` of it alone."""
    stats = [torch.var_mean(x[b, :, :max(n, 1)].float().reshape(norm.num_groups, -1), dim=1,
                            unbiased=False) for b, n in enumerate(x_len.tolist())]
    per_group = x.shape[1] // norm.num_groups
    var, mean = (torch.stack(s).repeat_interleave(per_group, dim=1) for s in zip(*stats))  # (B, C)
    scale = torch.rsqrt(var + norm.eps)
    if norm.affine:
        scale = scale * norm.weight.float()[None, :]
        shift = norm.bias.float()[None, :] - mean * scale
    else:
        shift = -mean * scale
    return torch.addcmul(shift[:, :, None].to(x.dtype), x, scale[:, :, None].to(x.dtype))


def _conv_features(feature_extractor: nn.Module, wavs: torch.Tensor, wavs_len: torch.Tensor
                   ) -> torch.Tensor:
    """torchaudio's ``ConvLayerBlock`` s (conv, norm, GELU) with group norms over valid
    frames only: ``(batch_size, num_frames, channels)``, batch invariant on valid frames."""
    x, x_len = wavs.unsqueeze(1), wavs_len
    for block in feature_extractor.conv_layers:
        x = block.conv(x)
        x_len = conv_lengths(x_len, [(block.kernel_size, block.stride)])
        norm = block.layer_norm
        if isinstance(norm, nn.GroupNorm) and not bool((x_len == x.shape[-1]).all()):
            x = _masked_group_norm(x, x_len, norm)
        elif norm is not None:
            x = norm(x)
        x = F.gelu(x)
    return x.transpose(1, 2)


def wav2vec2_hidden_states(model: nn.Module, wavs: torch.Tensor, wavs_len: torch.Tensor, *,
                           normalize_waveform: bool = False
                           ) -> Tuple[List[torch.Tensor], List[torch.Tensor]]:
    """Every hidden state of a torchaudio wav2vec2 / HuBERT / WavLM ``model`` (or a bundle's
    wrapper, which may normalise waveforms itself), on ``wavs``' device, batch invariant:
    ``(all_hs, all_hs_len)``, ``num_transformer_layers + 1`` tensors ``(batch_size,
    num_frames, embed_dim)`` (which ones: ``docs/upstreams.md``; padded frames 0) and
    their lengths ``(wavs_len - 400) // 320 + 1`` (0 below 400 samples)."""
    model, wrapped_norm = _unwrap(model)
    wavs, wavs_len = check_wavs(wavs, wavs_len, who="wav2vec2_hidden_states")
    encoder = model.encoder
    transformer = encoder.transformer
    layers = list(transformer.layers)
    batch_size = wavs.shape[0]
    first_weight = model.feature_extractor.conv_layers[0].conv.weight
    if wavs.device != first_weight.device:
        raise ValueError(f"wavs are on {wavs.device} but the model is on {first_weight.device}; "
                         "move the inputs (or the model) so both are on the same device")
    frames_len = conv_lengths(wavs_len, _model_conv_layers(model))
    num_frames = int(frames_len.max())
    if num_frames == 0:
        empty = wavs.new_zeros(batch_size, 0, encoder.feature_projection.projection.out_features)
        return [empty] * (len(layers) + 1), [frames_len] * (len(layers) + 1)

    if not torch.is_autocast_enabled(wavs.device.type):
        wavs = wavs.to(first_weight.dtype)
    if normalize_waveform or wrapped_norm:
        wavs = normalize_waveforms(wavs, wavs_len)  # s3prl's layer norm, eps 1e-5
    feats = _conv_features(model.feature_extractor, wavs, wavs_len)[:, :num_frames]
    x = encoder.feature_projection(feats)

    pad = ~length_mask(frames_len, num_frames)  # (B, T) True at padding
    any_pad = bool(pad.any())
    attention_mask = key_padding_mask = None
    if any_pad:
        x = x.masked_fill(pad[..., None], 0.0)
        _deps.torchaudio()
        from torchaudio.models.wav2vec2.wavlm_attention import WavLMSelfAttention

        if layers and isinstance(getattr(layers[0], "attention", None), WavLMSelfAttention):
            # additive float mask (what torchaudio turns a boolean one into, minus its
            # dtype-mismatch warning); fully padded rows only occur for utterances
            # without frames and are zeroed by _clean below.
            key_padding_mask = x.new_zeros(pad.shape).masked_fill(pad, float("-inf"))
        else:
            # SDPA boolean mask: True where the key takes part in attention.
            attention_mask = (~pad)[:, None, None, :].expand(batch_size, 1, num_frames, num_frames)

    def _clean(h: torch.Tensor) -> torch.Tensor:
        return h.masked_fill(pad[..., None], 0.0) if any_pad else h

    # layer 0: the input of the first transformer layer (torchaudio's Transformer._preprocess)
    x = x + transformer.pos_conv_embed(x)
    if transformer.layer_norm_first:  # post-LN ("base") models normalise here
        x = transformer.layer_norm(x)
    x = _clean(transformer.dropout(x))
    all_hs = [x]
    position_bias = None
    for layer in layers:
        x, position_bias = layer(x, attention_mask, position_bias=position_bias,
                                 key_padding_mask=key_padding_mask)
        x = _clean(x)
        all_hs.append(x)
    if not transformer.layer_norm_first and layers:  # pre-LN ("large"): final layer norm
        all_hs[-1] = _clean(transformer.layer_norm(all_hs[-1]))
    return all_hs, [frames_len] * len(all_hs)


# --------------------------------------------------------------------------- module


class TorchaudioUpstream(FixedUpstream):
    """A torchaudio ``Wav2Vec2Model`` (or a bundle's ``get_model()`` wrapper; kept bare as
    ``self.model``, device, dtype and mode as they are) as an s3prl upstream:
    :func:`wav2vec2_hidden_states`. ``normalize_waveform=None`` takes it from a bundle
    wrapper (else False). Layer drop is never applied; dropout follows ``train()``."""

    def __init__(self, model: nn.Module, *, name: Optional[str] = None,
                 normalize_waveform: Optional[bool] = None):
        super().__init__()
        self.model, wrapped_norm = _unwrap(model)
        self.normalize_waveform = (wrapped_norm if normalize_waveform is None
                                   else bool(normalize_waveform))
        self.name = name or type(self.model).__name__
        self.weights = "unknown"
        enc = self.model.encoder
        self._behind_convolutions(_model_conv_layers(self.model), len(enc.transformer.layers) + 1,
                                  enc.feature_projection.projection.out_features)

    def extra_repr(self) -> str:
        return (f"name={self.name!r}, weights={self.weights!r}, num_layer={self.num_layer}, "
                f"normalize_waveform={self.normalize_waveform}")

    def forward(self, wavs: torch.Tensor, wavs_len: torch.Tensor
                ) -> Tuple[List[torch.Tensor], List[torch.Tensor]]:
        return wav2vec2_hidden_states(self.model, wavs, wavs_len,
                                      normalize_waveform=self.normalize_waveform)


# --------------------------------------------------------------------------- factories


def _bundle(name: str):
    pipelines = _deps.torchaudio().pipelines
    if not isinstance(name, str):
        raise TypeError(f"name must be a str, one of {sorted(TORCHAUDIO_MODELS)}; got {name!r}")
    key = resolve_name(name)
    if key not in TORCHAUDIO_MODELS:
        raise ValueError(f"unknown torchaudio model {name!r}; available: "
                         f"{', '.join(TORCHAUDIO_MODELS)} (and s3prl's names for them, "
                         "s3viz.upstreams.ALIASES)")
    return key, TORCHAUDIO_MODELS[key], getattr(pipelines, TORCHAUDIO_MODELS[key])


def bundle_checkpoint(name: str) -> Tuple[str, str]:
    """``(url, local_path)`` of a model's torchaudio weight file (``url`` under
    ``S3VIZ_TORCHAUDIO_URL`` when set; ``local_path`` in torch.hub's checkpoint folder)."""
    filename = os.path.basename(_bundle(name)[2]._path)
    return torchaudio_base_url() + filename, os.path.join(torch_hub_checkpoints(), filename)


def _load_state_dict(model: nn.Module, path: str, what: str) -> None:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # unpickling errors come in many types
        raise ValueError(f"{what}: could not read {path!r} as a state dict with "
                         f"torch.load(weights_only=True): {e}") from e
    if isinstance(state, dict) and len(state) and not any(
            isinstance(v, torch.Tensor) for v in state.values()):
        state = next((state[k] for k in ("state_dict", "model") if isinstance(state.get(k), dict)),
                     state)
    if not isinstance(state, dict):
        raise ValueError(f"{what}: {path!r} holds a {type(state).__name__}, not a state dict")
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise ValueError(
            f"{what}: {path!r} is not a torchaudio state dict for this architecture ({e}). "
            "Checkpoints from fairseq or Hugging Face must be converted with "
            "torchaudio.models.wav2vec2.utils.import_fairseq_model / import_huggingface_model "
            "and wrapped with s3viz.upstreams.TorchaudioUpstream(model)") from e


def _build(factory, params: dict, salt: str, seed: int, **upstream) -> TorchaudioUpstream:
    """``factory(**params)`` as a :class:`TorchaudioUpstream`, random weights from ``seed``
    and ``salt`` (so ``hubert_base`` and ``wav2vec2_base`` differ)."""
    return seeded(lambda: TorchaudioUpstream(factory(**params), **upstream), seed, salt)


def torchaudio_upstream(name: str, pretrained: bool = True, *, checkpoint: Optional[str] = None,
                        seed: int = 0) -> TorchaudioUpstream:
    """The model ``name`` of :data:`TORCHAUDIO_MODELS` (or s3prl's name for it) as an s3prl
    upstream on the CPU in eval mode, with the bundle's weights through torch.hub's
    checkpoint folder (``docs/upstreams.md``), or those of ``checkpoint``, a state dict
    file in torchaudio's layout; ``weights`` says which."""
    _deps.torchaudio()
    from torchaudio.models import wav2vec2_model, wavlm_model

    key, bundle_name, bundle = _bundle(name)
    if not isinstance(pretrained, bool):
        raise TypeError(f"pretrained must be True or False, got {pretrained!r}")
    what = f"torchaudio_upstream({key!r})"
    path, downloaded = None, False
    if checkpoint is not None:
        if not pretrained:
            raise ValueError(f"{what}: checkpoint= gives weights and pretrained=False asks for "
                             "random ones; pass one of them")
        path = os.path.abspath(os.path.expanduser(os.fspath(checkpoint)))
        if not os.path.isfile(path):
            raise FileNotFoundError(f"checkpoint={checkpoint!r}: no such file")
        weights = f"checkpoint {path}"
    elif pretrained:
        filename = os.path.basename(bundle._path)
        path, downloaded = fetch_torchaudio(what, bundle_name, filename)
        weights = f"pretrained: torchaudio.pipelines.{bundle_name} ({filename})"
    else:
        weights = f"{RANDOM_WEIGHTS} (seed {int(seed)})"
    up = _build(wavlm_model if bundle._model_type == "WavLM" else wav2vec2_model, bundle._params,
                key, seed, name=key, normalize_waveform=bool(bundle._normalize_waveform))
    if path is not None:
        try:
            _load_state_dict(up.model, path, what)
        except ValueError as err:
            if not downloaded:
                raise
            from .._fs import OwnedFolder  # (a link there is removed itself, never followed)

            OwnedFolder(os.path.dirname(path), "torch.hub's checkpoint folder",
                        create=False).unlink(os.path.basename(path))
            raise ValueError(f"{err}\nThe file was just downloaded and does not load, so it "
                             f"was deleted from the cache ({path}); check "
                             f"S3VIZ_TORCHAUDIO_URL or the network and try again") from None
    up.weights = weights
    return up.eval()


# --------------------------------------------------------------------------- s3prl checkpoints

_FAIRSEQ_FIELDS = {  # fairseq's field: (wav2vec2_model's argument, type, lowest, default)
    "conv_bias": ("extractor_conv_bias", bool, None, False),
    "encoder_embed_dim": ("encoder_embed_dim", int, 1, 768),
    "dropout_input": ("encoder_projection_dropout", float, 0, 0.0),
    "conv_pos": ("encoder_pos_conv_kernel", int, 1, 128),
    "conv_pos_groups": ("encoder_pos_conv_groups", int, 1, 16),
    "encoder_layers": ("encoder_num_layers", int, 1, 12),
    "encoder_attention_heads": ("encoder_num_heads", int, 1, 12),
    "attention_dropout": ("encoder_attention_dropout", float, 0, 0.1),
    "encoder_ffn_embed_dim": ("encoder_ff_interm_features", int, 1, 3072),
    "activation_dropout": ("encoder_ff_interm_dropout", float, 0, 0.0),
    "dropout": ("encoder_dropout", float, 0, 0.1),
    "layer_norm_first": ("encoder_layer_norm_first", bool, None, False),
}
"""The numeric fields of fairseq's (and s3prl's) HubertConfig / Wav2Vec2Config that s3viz
reads, with fairseq's defaults; besides ``extractor_mode`` and ``conv_feature_layers``."""

_FAIRSEQ_DEFAULTS = {"extractor_mode": "default", "conv_feature_layers":
                     "[(512, 10, 5)] + [(512, 3, 2)] * 4 + [(512,2,2)] * 2",
                     **{field: spec[3] for field, spec in _FAIRSEQ_FIELDS.items()}}

_MAX_CONV_LAYERS = 64
"""More convolution layers than any released model has (7): a bound for reading configs."""


def _conv_spec(text, where: str) -> list:
    """fairseq's ``conv_feature_layers`` ("[(512, 10, 5)] + [(512, 3, 2)] * 4 ..."), read
    without eval: lists and tuples of ints joined by ``+`` and ``*`` only."""

    def value(node):
        if isinstance(node, ast.Constant) and isinstance(node.value, int):
            return node.value
        if isinstance(node, (ast.List, ast.Tuple)):
            items = [value(e) for e in node.elts]
            return items if isinstance(node, ast.List) else tuple(items)
        if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Add, ast.Mult)):
            left, right = value(node.left), value(node.right)
            if isinstance(node.op, ast.Add):
                return left + right
            if not isinstance(left, list) or isinstance(right, (list, tuple)) or not (
                    0 <= right and len(left) * right <= _MAX_CONV_LAYERS):
                raise ValueError  # only [layers] * count, and never a long list
            return left * right
        raise ValueError
    try:
        layers = value(ast.parse(str(text), mode="eval").body)
        layers = [(int(d), int(k), int(s)) for d, k, s in layers]
    except (SyntaxError, ValueError, TypeError, RecursionError, MemoryError):
        raise ValueError(f"{where}: conv_feature_layers {str(text)[:200]!r} is not a list of at "
                         f"most {_MAX_CONV_LAYERS} (dim, kernel, stride) tuples") from None
    if not layers or any(min(layer) < 1 for layer in layers):
        raise ValueError(f"{where}: conv_feature_layers {text!r} needs positive (dim, kernel, "
                         "stride) tuples")
    return layers


def _cfg_value(cfg: dict, key: str, kind: type, where: str, low=None, section="model_cfg"):
    """``cfg[key]`` as a bool, int or float, refused when it is spelled otherwise (a text
    "False" is not False) or below ``low``."""
    value = cfg[key]
    if kind is bool:
        ok, name = isinstance(value, bool) or (isinstance(value, int) and value in (0, 1)), ""
    else:
        ok = isinstance(value, int if kind is int else (int, float)) and not isinstance(value, bool)
        name = "an int" if kind is int else "a number"
    if not ok or (low is not None and value < low):
        raise ValueError(f"{where}: {section} {key}={value!r} is not "
                         + ("True or False" if kind is bool else
                            name + (f" >= {low}" if low is not None else "")))
    return kind(value)


def _fairseq_params(cfg: dict, where: str) -> dict:
    """``torchaudio.models.wav2vec2_model``'s arguments for fairseq's config fields."""
    for field, allowed in (("activation_fn", ("gelu",)), ("layer_type", ("transformer",)),
                           ("pos_enc_type", ("abs",)), ("attn_type", ("",))):
        if field in cfg and cfg[field] not in allowed:  # another architecture than torchaudio's
            raise ValueError(f"{where}: {field}={cfg[field]!r}; s3viz builds fairseq's HuBERT / "
                             f"wav2vec 2.0 transformer ({field} {allowed[0]!r}) only")
    mode = {"default": "group_norm", "layer_norm": "layer_norm"}.get(str(cfg["extractor_mode"]))
    if mode is None:
        raise ValueError(f"{where}: extractor_mode {cfg['extractor_mode']!r} is neither "
                         "'default' nor 'layer_norm'")
    params = dict(extractor_mode=mode,
                  extractor_conv_layer_config=_conv_spec(cfg["conv_feature_layers"], where),
                  encoder_layer_drop=0.0, aux_num_out=None)  # (layer drop: never when extracting)
    params.update({arg: _cfg_value(cfg, field, kind, where, low)
                   for field, (arg, kind, low, _) in _FAIRSEQ_FIELDS.items()})
    for parts, n in (("encoder_attention_heads", params["encoder_num_heads"]),
                     ("conv_pos_groups", params["encoder_pos_conv_groups"])):
        if params["encoder_embed_dim"] % n:
            raise ValueError(f"{where}: model_cfg encoder_embed_dim={cfg['encoder_embed_dim']} "
                             f"is not a multiple of {parts}={n}")
    if cfg.get("pos_conv_depth", 1) != 1:
        raise ValueError(f"{where}: model_cfg pos_conv_depth={cfg['pos_conv_depth']!r}; "
                         "torchaudio's architecture has one positional convolution")
    return params


def _load_fairseq(model: nn.Module, fairseq_weights: dict, params: dict, where: str) -> None:
    # torchaudio's fairseq key map (private, but torchaudio's own import_fairseq_model
    # path; torch and torchaudio are pinned together): written by hand it would copy it
    _deps.torchaudio()
    from torchaudio.models.wav2vec2.utils.import_fairseq import _convert_state_dict

    weights = {key.replace("parametrizations.weight.original0", "weight_g").replace(
        "parametrizations.weight.original1", "weight_v"): value  # torch's newer weight norm
        for key, value in fairseq_weights.items()}
    try:
        converted = _convert_state_dict(weights)
    except ValueError as err:
        raise ValueError(f"{where}: {err}; not a HuBERT / wav2vec 2.0 checkpoint") from None
    converted = {k: v for k, v in converted.items()  # pre-training heads
                 if k != "label_embs_concat" and not k.startswith("aux.")}
    proj = "encoder.feature_projection.projection."
    dim = params["encoder_embed_dim"]
    if proj + "weight" not in converted and params["extractor_conv_layer_config"][-1][0] == dim:
        # fairseq has no projection when the CNN's width is the model's: the identity
        converted[proj + "weight"] = torch.eye(dim)
        converted[proj + "bias"] = torch.zeros(dim)
    try:
        model.load_state_dict(converted)
    except RuntimeError as err:
        raise ValueError(f"{where}: the weights do not fit the architecture its model_cfg "
                         f"describes ({err})") from None


def from_s3prl_checkpoint(path, *, pretrained: bool = True, seed: int = 0,
                          name: Optional[str] = None) -> TorchaudioUpstream:
    """A HuBERT or wav2vec 2.0 checkpoint in s3prl's converted format (what its
    ``hubert_local`` / ``wav2vec2_local`` read: ``task_cfg``, ``model_cfg``,
    ``model_weight``) as an upstream, built with torchaudio without s3prl or fairseq
    (``docs/upstreams.md``); ``pretrained=False``: random weights from ``seed``."""
    _deps.torchaudio()
    from torchaudio.models import wav2vec2_model

    from ..checkpoints import safe_load

    file = Path(os.path.expanduser(os.fspath(path))).resolve()
    where = f"s3prl checkpoint {str(file)!r}"
    state = safe_load(file, hint=(
        "give the file s3prl's hubert_local / wav2vec2_local read (task_cfg, model_cfg, "
        "model_weight)", "convert it where you trust the file (s3prl's convert.py) and save "
        "plain dicts and tensors"))
    missing = [k for k in ("model_cfg", "model_weight")
               if not isinstance(state, dict) or not isinstance(state.get(k), dict)]
    if missing:
        raise ValueError(f"{where}: no {missing} dicts, so its architecture is unknown. A "
                         "weight file loads by its path when it is s3prl's converted HuBERT / "
                         "wav2vec 2.0 checkpoint (task_cfg, model_cfg, model_weight); a "
                         "torchaudio state dict needs its architecture's name: "
                         "get_upstream('hubert_base', checkpoint=PATH)")
    cfg = {**_FAIRSEQ_DEFAULTS, **{k: v for k, v in dict(state["model_cfg"]).items()
                                   if v is not None}}
    params = _fairseq_params(cfg, where)
    task = state.get("task_cfg") or {}
    if not isinstance(task, dict):
        raise ValueError(f"{where}: task_cfg is a {type(task).__name__}, not a dict")
    normalize = _cfg_value({"normalize": task.get("normalize", False)}, "normalize", bool,
                           where, section="task_cfg")
    up = _build(wav2vec2_model, params, str(file), seed, name=name or file.stem,
                normalize_waveform=normalize)
    if pretrained:
        _load_fairseq(up.model, dict(state["model_weight"]), params, where)
    up.weights = (f"checkpoint {file} (s3prl)" if pretrained
                  else f"{RANDOM_WEIGHTS} (seed {int(seed)}; the architecture of {file})")
    return up.eval()
