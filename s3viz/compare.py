"""Does an utterance-level model say what the pooled frame-level outputs say?

:func:`compare_frame_utterance` runs an ``AbsFrameModel`` and an ``AbsUtteranceModel``
on the same features and compares the pooled frame outputs with the utterance outputs;
with CUDA also CPU against GPU (the models are never moved: copies go to the other device).
"""

from __future__ import annotations

import contextlib
import copy
import time
from typing import Callable, Optional, Sequence, Tuple, Union

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from ._device import eval_session
from ._device import module_device as _module_device
from ._device import resolve_device as _resolve_device
from .models import length_mask, masked_max, masked_mean
from .store import NONFINITE_HINT, NonFiniteError, tag_weights

__all__ = ["compare_frame_utterance", "pool_frames"]

POOLINGS = ("mean", "max")


def pool_frames(y: torch.Tensor, y_len: torch.Tensor, pooling: Union[str, Callable] = "mean"):
    """Pool ``(batch_size, seq_len, output_size)`` frame-level outputs over each utterance's
    ``y_len`` valid frames into ``(batch_size, output_size)``: ``pooling`` is ``"mean"``,
    ``"max"`` or a callable ``(y, y_len) -> (batch_size, output_size)``."""
    if callable(pooling):
        return pooling(y, y_len)
    if pooling == "mean":
        return masked_mean(y, y_len)
    if pooling == "max":
        return masked_max(y, y_len)
    raise ValueError(f"pooling must be one of {POOLINGS} or a callable, got {pooling!r}")


def _pad(seqs: Sequence[torch.Tensor]) -> Tuple[torch.Tensor, torch.Tensor]:
    return (torch.nn.utils.rnn.pad_sequence([s.float() for s in seqs], batch_first=True),
            torch.tensor([int(s.shape[0]) for s in seqs], dtype=torch.long))


def _is_store(data) -> bool:
    return all(hasattr(data, a) for a in ("utterance", "lengths", "num_layer"))


def _batches(data, *, layer, featurizer, batch_size: int):
    """``(n, ids, iterator of (positions, hs (B, T, H) cpu float32, hs_len (B,) cpu long))``."""
    session = contextlib.nullcontext()
    if isinstance(data, (tuple, list)) and len(data) == 2 and not _is_store(data):
        hs, hs_len = data
        if not isinstance(hs, torch.Tensor) or hs.dim() != 3:
            raise ValueError("data=(hs, hs_len) needs hs as a (batch_size, seq_len, hidden_size) "
                             "tensor, got " + (str(tuple(hs.shape)) if isinstance(hs, torch.Tensor)
                                               else type(hs).__name__))
        hs_len = torch.as_tensor(hs_len)
        if hs_len.dim() != 1 or hs_len.shape[0] != hs.shape[0]:
            raise ValueError(f"data=(hs, hs_len) needs hs_len of shape ({hs.shape[0]},), "
                             f"got {tuple(hs_len.shape)}")
        if layer is not None or featurizer is not None:
            raise ValueError("layer= and featurizer= apply to a LayerStore, not to (hs, hs_len)")
        n = hs.shape[0]
        hs_cpu, hs_len = hs.detach().to("cpu", torch.float32), hs_len.to("cpu", torch.long)

        def load(pos):
            h, hl = hs_cpu[pos[0]: pos[-1] + 1], hs_len[pos[0]: pos[-1] + 1]
            return h[:, : int(hl.max())] if hl.numel() else h, hl
    elif not _is_store(data):
        raise TypeError("data must be a LayerStore (s3viz.extract) or a tuple (hs, hs_len) with "
                        f"hs (batch_size, seq_len, hidden_size); got {type(data).__name__}")
    else:
        store, n = data, len(data)
        if featurizer is not None and layer is not None:
            raise ValueError("pass either layer= or featurizer=, not both")
        if featurizer is None:
            if layer is None and store.num_layer != 1:
                raise ValueError(f"the store holds {store.num_layer} layers: pass layer=<index "
                                 "in 0..num_layer-1> or featurizer=<an AbsFeaturizer> to choose "
                                 "the features")
            layer = 0 if layer is None else int(layer)
            if not -store.num_layer <= layer < store.num_layer:
                raise IndexError(f"layer must be in [0, {store.num_layer}), got {layer}")
            layer %= store.num_layer
            lengths = np.asarray(store.lengths(layer), dtype=np.int64)

            def load(pos):
                frames, _ = store.layer(layer, utterances=pos.tolist())
                return _pad(torch.split(frames, lengths[pos].tolist()))
        else:
            feat_dev = _resolve_device(None, featurizer)
            session = eval_session(featurizer)

            def load(pos):
                utts = [store.utterance(int(i)) for i in pos]
                padded = [_pad([u[li] for u in utts]) for li in range(store.num_layer)]
                with torch.inference_mode():
                    hs, hs_len = featurizer([h.to(feat_dev) for h, _ in padded],
                                            [hl.to(feat_dev) for _, hl in padded])
                return hs.detach().to("cpu", torch.float32), hs_len.to("cpu", torch.long)

    ids = [str(i) for i in getattr(data, "ids", range(n))]

    def it():
        with session:
            for b0 in range(0, n, batch_size):
                pos = np.arange(b0, min(n, b0 + batch_size))
                yield (pos, *load(pos))

    return n, ids, it()


class _Runner:
    """The two models on one device: the user's objects when already there (in eval mode
    until ``stack`` closes), else copies."""

    def __init__(self, frame_model, utterance_model, device: torch.device, stack):
        self.device, self.models = device, []
        for m in (frame_model, utterance_model):
            if isinstance(m, torch.nn.Module):
                own = _module_device(m)
                if own is not None and own != device:
                    m = copy.deepcopy(m).to(device).eval()
                else:
                    stack.enter_context(eval_session(m))
            self.models.append(m)

    def _sync(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def __call__(self, hs, hs_len):
        """``(y, y_len, u, milliseconds per utterance)``."""
        fm, um = self.models
        hs = hs.to(self.device, non_blocking=True)
        hs_len = hs_len.to(self.device)
        self._sync()
        t0 = time.perf_counter()
        with torch.inference_mode():
            out = fm(hs, hs_len)
            if not isinstance(out, (tuple, list)) or len(out) != 2:
                raise TypeError("frame_model(x, x_len) must return (y, y_len) (AbsFrameModel); "
                                f"got {type(out).__name__}")
            y, y_len = out
            u = um(hs, hs_len)
        self._sync()
        ms = (time.perf_counter() - t0) / hs.shape[0] * 1e3
        if not isinstance(u, torch.Tensor) or u.dim() != 2:
            raise TypeError("utterance_model(x, x_len) must return a (batch_size, output_size) "
                            f"tensor (AbsUtteranceModel); got "
                            f"{getattr(u, 'shape', type(u).__name__)}")
        if y.dim() != 3 or y.shape[-1] != u.shape[-1]:
            raise ValueError(f"frame_model outputs {tuple(y.shape)} but utterance_model outputs "
                             f"{tuple(u.shape)}: they must share output_size to be compared")
        return y, torch.as_tensor(y_len, device=y.device).long(), u, ms


def _refuse_nonfinite(hs, hs_len, ids, what):
    """NonFiniteError naming the first utterance whose valid frames of ``hs`` hold NaN/inf
    (padding may hold anything)."""
    valid = length_mask(torch.as_tensor(hs_len).to(hs.device), hs.shape[1])
    finite = torch.isfinite(hs).reshape(hs.shape[0], hs.shape[1], -1).all(dim=-1) | ~valid
    if bool(finite.all()):
        return
    b = int(torch.nonzero(~finite.all(dim=1))[0])
    raise NonFiniteError(f"compare_frame_utterance: {what} of utterance {ids[b]!r} hold NaN/inf "
                         f"in {int((~finite[b]).sum())} frame(s); {NONFINITE_HINT}")


def compare_frame_utterance(frame_model, utterance_model, data, *,
                            pooling: Union[str, Callable] = "mean", layer: Optional[int] = None,
                            featurizer=None, device=None, batch_size: int = 32,
                            cpu_vs_gpu: Optional[bool] = None) -> pd.DataFrame:
    """Compare an utterance-level model with the pooled outputs of a frame-level model.

    Args:
        frame_model: ``(x, x_len) -> (y (batch_size, seq_len, output_size), y_len)``.
        utterance_model: ``(x, x_len) -> (batch_size, output_size)``.
        data: a LayerStore (its features chosen by ``layer`` or by a ``featurizer`` over
            all stored layers, run where its parameters are) or ``(hs, hs_len)``.
        pooling: over valid frames: ``"mean"``, ``"max"`` or a callable ``(y, y_len)``.
        device: where the reported outputs come from (None: cuda when available).
        cpu_vs_gpu: also run on the other device and compare (default: when CUDA is).

    Returns one row per utterance: ``utterance, id, num_frames, cosine, l2, rel_l2,
    argmax_frame, argmax_utterance, argmax_agree``, and ``cpu_gpu_frame_max_abs_diff,
    cpu_gpu_utterance_max_abs_diff, cpu_ms, gpu_ms`` (amortised over its batch; NaN
    without CUDA). ``df.attrs``: ``device``, ``gpu``, ``note``, ``summary`` and, for a
    LayerStore, ``weights``.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) \
            or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    for name, m in (("frame_model", frame_model), ("utterance_model", utterance_model)):
        if not callable(m):
            raise TypeError(f"{name} must be callable (a torch.nn.Module), got {type(m).__name__}")
    if not callable(pooling) and pooling not in POOLINGS:
        raise ValueError(f"pooling must be one of {POOLINGS} or a callable, got {pooling!r}")
    fo = getattr(frame_model, "output_size", None)
    uo = getattr(utterance_model, "output_size", None)
    if isinstance(fo, int) and isinstance(uo, int) and fo != uo:
        raise ValueError(f"frame_model.output_size={fo} but utterance_model.output_size={uo}; "
                         "compare models with the same output space (e.g. the same classes)")
    dev = _resolve_device(device)
    has_cuda = _resolve_device(None).type == "cuda"  # device=None would pick a GPU
    cpu_vs_gpu = has_cuda if cpu_vs_gpu is None else cpu_vs_gpu
    if cpu_vs_gpu and not has_cuda:
        raise ValueError("cpu_vs_gpu=True needs CUDA, which is not available")
    other = torch.device("cpu" if dev.type == "cuda" else "cuda") if cpu_vs_gpu else None
    n, ids, batches = _batches(data, layer=layer, featurizer=featurizer, batch_size=int(batch_size))

    cols = {"num_frames": np.zeros(n, dtype=np.int64),
            **{k: np.full(n, np.nan) for k in ("cosine", "l2", "rel_l2")},
            "argmax_frame": np.zeros(n, dtype=np.int64),
            "argmax_utterance": np.zeros(n, dtype=np.int64), "argmax_agree": None,
            **{k: np.full(n, np.nan) for k in ("cpu_gpu_frame_max_abs_diff",
                                               "cpu_gpu_utterance_max_abs_diff", "cpu_ms",
                                               "gpu_ms")}}
    warm = False
    with contextlib.ExitStack() as stack:  # then the user's models get their flags back
        runners = [_Runner(frame_model, utterance_model, d, stack)
                   for d in (dev, other) if d is not None]
        for pos, hs, hs_len in batches:
            _refuse_nonfinite(hs, hs_len, [ids[i] for i in pos], "the hidden states")
            if not warm:  # one untimed pass per device: CUDA context, cuBLAS handles, caches
                for r in runners:
                    r(hs[:1], hs_len[:1])
                warm = True
            y, y_len, u, ms = runners[0](hs, hs_len)
            pooled = pool_frames(y, y_len, pooling).float().cpu()
            u_cpu = u.float().cpu()
            for what, out in (("frame_model's pooled output", pooled),
                              ("utterance_model's output", u_cpu)):
                _refuse_nonfinite(out[:, None], torch.ones(len(pos), dtype=torch.long),
                                  [ids[i] for i in pos], what)
            cols["cosine"][pos] = F.cosine_similarity(pooled, u_cpu, dim=-1, eps=1e-12).numpy()
            l2 = (pooled - u_cpu).norm(dim=-1)
            cols["l2"][pos] = l2.numpy()
            cols["rel_l2"][pos] = (l2 / u_cpu.norm(dim=-1).clamp(min=1e-12)).numpy()
            cols["argmax_frame"][pos] = pooled.argmax(-1).numpy()
            cols["argmax_utterance"][pos] = u_cpu.argmax(-1).numpy()
            cols["num_frames"][pos] = hs_len.numpy()
            cols["gpu_ms" if dev.type == "cuda" else "cpu_ms"][pos] = ms
            if len(runners) > 1:
                y2, _, u2, ms2 = runners[1](hs, hs_len)
                cols["gpu_ms" if other.type == "cuda" else "cpu_ms"][pos] = ms2
                yc = y.float().cpu()  # per utterance, max |y - y2| over its valid frames
                valid = length_mask(y_len.cpu(), yc.shape[1])[..., None]
                cols["cpu_gpu_frame_max_abs_diff"][pos] = (yc - y2.float().cpu()).abs(
                    ).masked_fill(~valid, 0.0).amax(dim=(1, 2)).numpy()
                cols["cpu_gpu_utterance_max_abs_diff"][pos] = (
                    u_cpu - u2.float().cpu()).abs().amax(dim=-1).numpy()
    cols["argmax_agree"] = cols["argmax_frame"] == cols["argmax_utterance"]
    df = pd.DataFrame({"utterance": np.arange(n, dtype=np.int64), "id": ids, **cols})
    gpu_name = torch.cuda.get_device_name(0) if has_cuda else None
    if other is None:
        note = ("no CUDA: CPU vs GPU columns are NaN" if not has_cuda
                else "CPU vs GPU comparison switched off (cpu_vs_gpu=False)")
    else:
        note = f"CPU vs GPU compared on {gpu_name}"
    df.attrs.update({"device": str(dev), "gpu": gpu_name, "note": note,
                     "summary": _summary(df, pooling, dev, other)})
    if _is_store(data):  # the hidden states' weights (a tuple of tensors does not say)
        tag_weights(df, data)
    return df


def _summary(df: pd.DataFrame, pooling, dev, other) -> str:
    if df.empty:
        return "no utterances"
    name = pooling if isinstance(pooling, str) else getattr(pooling, "__name__", "custom")
    s = (f"{len(df)} utterances on {dev}: {name}-pooled frame outputs vs utterance outputs: "
         f"cosine mean {df['cosine'].mean():.4f} (min {df['cosine'].min():.4f}), "
         f"argmax agreement {df['argmax_agree'].mean():.0%}.")
    if other is not None:
        s += (f" CPU vs GPU: max |diff| {df['cpu_gpu_frame_max_abs_diff'].max():.2e} (frame), "
              f"{df['cpu_gpu_utterance_max_abs_diff'].max():.2e} (utterance); "
              f"{df['cpu_ms'].sum():.1f} ms on CPU vs {df['gpu_ms'].sum():.1f} ms on GPU.")
    return s
