"""The self-attention probabilities of a supported upstream's transformer layers, seen
while it runs its own forward: which modules are its attention, and how their
probabilities are read (``docs/attention.md``, "How the maps are read").
"""

from __future__ import annotations

import contextlib
import math
import threading
from typing import Callable, List

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["attention_modules", "capture_attention", "SUPPORTED"]

SUPPORTED = ("the torchaudio wav2vec2 / HuBERT / WavLM adapters (TorchaudioUpstream), the "
             "Hugging Face adapters (TransformersUpstream, WhisperEncoderUpstream) and the "
             "tiny model (s3viz.zoo.tiny)")


def attention_modules(upstream) -> List[nn.Module]:
    """The attention module of each transformer layer of ``upstream``, first layer first
    (TypeError for an upstream whose attention s3viz cannot read)."""
    from ..zoo.tiny import TinyUpstream
    from ._torchaudio import TorchaudioUpstream
    from ._transformers import TransformersUpstream, WhisperEncoderUpstream

    if isinstance(upstream, TinyUpstream):
        return [layer.attn for layer in upstream.layers]
    if isinstance(upstream, TorchaudioUpstream):
        return [layer.attention for layer in upstream.model.encoder.transformer.layers]
    if isinstance(upstream, (TransformersUpstream, WhisperEncoderUpstream)):
        encoder = upstream.encoder if isinstance(upstream, WhisperEncoderUpstream) \
            else upstream.model.encoder
        mods = [getattr(layer, "attention", None) or getattr(layer, "self_attn", None)
                for layer in encoder.layers]
        if any(m is None for m in mods):
            raise TypeError(f"{type(upstream).__name__} {upstream.name!r}: a layer without an "
                            "'attention' or 'self_attn' module; s3viz cannot read its attention")
        return mods
    raise TypeError(f"attention maps need an upstream whose attention s3viz can read: "
                    f"{SUPPORTED}; got {type(upstream).__name__}")


def _probabilities(q, k, attn_mask, scale) -> torch.Tensor:
    """``softmax(q k^T * scale + mask)`` as scaled_dot_product_attention defines it
    (a boolean mask keeps the True keys), in float32 at least; fully masked rows 0."""
    dtype = torch.promote_types(q.dtype, torch.float32)
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    scores = torch.matmul(q.to(dtype), k.to(dtype).transpose(-2, -1)) * scale
    if attn_mask is not None:
        if attn_mask.dtype == torch.bool:
            scores = scores.masked_fill(~attn_mask, float("-inf"))
        else:
            scores = scores + attn_mask.to(dtype)
    return torch.softmax(scores, dim=-1).nan_to_num(0.0)


# torch.nn.functional's two attention functions are wrapped while any capture is open (a
# count under a lock), and each wrapper reads the capture of its own thread: captures in
# several threads, opened and closed in any order, neither clash nor leave torch wrapped
_LOCK = threading.Lock()
_OPEN = [0]
_ORIG = {}
_LOCAL = threading.local()


def _sdpa(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, **kw):
    state = getattr(_LOCAL, "state", None)
    if state is not None and state["layer"] and not is_causal \
            and not kw.get("enable_gqa", False) and query.shape[-3] == key.shape[-3]:
        state["sink"](state["layer"], _probabilities(query, key, attn_mask, scale))
        state["seen"] = True
    return _ORIG["sdpa"](query, key, value, attn_mask=attn_mask, dropout_p=dropout_p,
                         is_causal=is_causal, scale=scale, **kw)


def _mha(*args, **kw):
    out = _ORIG["mha"](*args, **kw)
    state = getattr(_LOCAL, "state", None)
    if state is not None and state["layer"]:
        # the same call with per-head weights: torch averages them over heads by default
        kw2 = dict(kw, need_weights=True, average_attn_weights=False, training=False)
        if len(args) > 13:  # training passed by position (index 13)
            args = args[:13] + (False,) + args[14:]
            kw2.pop("training")
        weights = _ORIG["mha"](*args, **kw2)[1]
        state["sink"](state["layer"], weights.float().nan_to_num(0.0))
        state["seen"] = True
    return out


@contextlib.contextmanager
def _wrapped():
    with _LOCK:
        if _OPEN[0] == 0:
            _ORIG["sdpa"], _ORIG["mha"] = F.scaled_dot_product_attention, \
                F.multi_head_attention_forward
            F.scaled_dot_product_attention, F.multi_head_attention_forward = _sdpa, _mha
        _OPEN[0] += 1
    try:
        yield
    finally:
        with _LOCK:
            _OPEN[0] -= 1
            if _OPEN[0] == 0:
                F.scaled_dot_product_attention = _ORIG.pop("sdpa")
                F.multi_head_attention_forward = _ORIG.pop("mha")


@contextlib.contextmanager
def capture_attention(upstream, sink: Callable[[int, torch.Tensor], None]):
    """Within the block, each forward of ``upstream`` in this thread calls ``sink(layer,
    probs)`` for every transformer layer (1-based) as it runs: ``probs (batch, heads,
    queries, keys)`` float32, the probabilities the layer's attention used, one layer at a
    time.

    The model's own computation is unchanged: while one of its attention modules runs,
    ``torch.nn.functional.scaled_dot_product_attention`` and ``multi_head_attention_forward``
    are wrapped so that their probabilities are also computed from the same query, key
    and mask (one more ``q k^T``); Hugging Face's eager attention, which computes no
    SDPA, hands its own probabilities back as its second output. A layer whose
    probabilities were seen neither way raises an error.
    """
    mods = attention_modules(upstream)
    state = {"layer": 0, "seen": False, "sink": sink}

    def before(module, args, layer):
        if getattr(_LOCAL, "state", None) is state:
            state["layer"], state["seen"] = layer, False

    def after(module, args, output, layer):
        if getattr(_LOCAL, "state", None) is not state:
            return  # the module ran in another thread, outside this capture
        state["layer"] = 0
        if state["seen"]:
            return
        probs = output[1] if isinstance(output, tuple) and len(output) > 1 else None
        if isinstance(probs, torch.Tensor) and probs.dim() == 4:  # HF eager attention
            sink(layer, probs.float())
            return
        raise RuntimeError(f"could not read the attention probabilities of layer {layer} of "
                           f"{getattr(upstream, 'name', type(upstream).__name__)!r}: its "
                           "attention runs neither torch's scaled_dot_product_attention nor "
                           "an eager implementation that returns them")

    handles, outer = [], getattr(_LOCAL, "state", None)
    try:
        for i, m in enumerate(mods, start=1):
            handles.append(m.register_forward_pre_hook(
                lambda mod, args, i=i: before(mod, args, i)))
            handles.append(m.register_forward_hook(
                lambda mod, args, out, i=i: after(mod, args, out, i)))
        with _wrapped():
            _LOCAL.state = state
            try:
                yield len(mods)
            finally:
                _LOCAL.state = outer
    finally:
        for h in handles:
            h.remove()
