"""Train the tiny upstream self-supervised on the embedded synthetic corpus (HuBERT iteration 1).

``python -m s3viz.zoo.train_tiny [--steps N] [--out PATH] [--seed 0] [--device DEV]``:
masked prediction of k-means clusters of MFCC frames (``--iteration 2``:
of an earlier model's hidden states), on voices and sentences kept apart from
the held-out set (:func:`data_split`, :func:`held_out_corpus`). The run is
seeded. The objective, the split and the options: ``docs/zoo.md``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .._fs import OwnedFolder
from .. import _deps
from ..align import conv_lengths
from ..data.synthetic import SPEAKERS
from .tiny import WEIGHTS_PATH, TinyConfig, TinyUpstream, save_tiny_weights, tiny
from .._device import resolve_device as _resolve_device

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["HELD_OUT_SEED", "HELD_OUT_SPEAKERS", "SPEED_RATES", "TRAIN_SEED", "TRAIN_SPEAKERS",
           "bar_check", "best_layers", "curve_check", "data_split",
           "held_out_corpus", "kmeans", "main", "mfcc_features", "model_card", "probe_comparison",
           "span_mask", "speed_perturb", "train", "training_corpus"]

TRAIN_SEED = 1001
"""Seed of the training sentences (``s3viz.data.synthetic_corpus(seed=TRAIN_SEED)``)."""

HELD_OUT_SEED = 2002
"""Seed of the held-out sentences."""

HELD_OUT_SPEAKERS: dict[str, dict[str, object]] = {
    # three of the built-in speakers ...
    **{k: dict(SPEAKERS[k]) for k in ("spk02", "spk05", "spk07")},
    # ... and three more voices
    "hld01": dict(voice="en-us+belinda", pitch=60, rate=170, range=55, gender="female"),
    "hld02": dict(voice="en+john", pitch=40, rate=165, range=50, gender="male"),
    "hld03": dict(voice="en-gb-x-rp+linda", pitch=64, rate=175, range=60, gender="female"),
}
"""Voices never heard in training (no eSpeak variant of theirs is in :data:`TRAIN_SPEAKERS`)."""

TRAIN_SPEAKERS: dict[str, dict[str, object]] = {
    # five of the built-in speakers ...
    **{k: dict(SPEAKERS[k]) for k in ("spk01", "spk03", "spk04", "spk06", "spk08")},
    # ... and four more voices, none of them a variant of a held-out speaker
    "trn01": dict(voice="en-us+m4", pitch=46, rate=172, range=50, gender="male"),
    "trn02": dict(voice="en-us+f5", pitch=64, rate=168, range=55, gender="female"),
    "trn03": dict(voice="en+m6", pitch=36, rate=160, range=45, gender="male"),
    "trn04": dict(voice="en-gb-x-rp+m8", pitch=44, rate=178, range=55, gender="male"),
    "trn05": dict(voice="en-us+m5", pitch=50, rate=182, range=45, gender="male"),
    "trn06": dict(voice="en+annie", pitch=68, rate=165, range=60, gender="female"),
    "trn07": dict(voice="en-us+klatt2", pitch=45, rate=170, range=50, gender="male"),
    "trn08": dict(voice="en+steph", pitch=60, rate=175, range=55, gender="female"),
    "trn09": dict(voice="en-gb-x-rp+david", pitch=40, rate=168, range=50, gender="male"),
}
"""Voices of the training split."""

_NOTEBOOK_SENTENCES = 1000  # sentences of seed 0 kept out of training


# --------------------------------------------------------------------------- data

def data_split() -> dict[str, object]:
    """The training / held-out split, as a dict for the model card."""
    return {"train_speakers": {k: v["voice"] for k, v in TRAIN_SPEAKERS.items()},
            "held_out_speakers": {k: v["voice"] for k, v in HELD_OUT_SPEAKERS.items()},
            "train_sentence_seed": TRAIN_SEED, "held_out_sentence_seed": HELD_OUT_SEED}


def _corpus_without(n_utterances: int, seed: int, speakers: dict, banned: dict):
    """``synthetic_corpus(n_utterances, seed, speakers)`` less the utterances whose sentence
    is among the first ``n`` sentences of any ``{seed: n}`` of ``banned``."""
    from ..data import make_sentences, synthetic_corpus

    corpus = synthetic_corpus(n_utterances, seed=seed, speakers=speakers)
    texts = set().union(*(make_sentences(n, k)["text"] for k, n in banned.items()))
    return corpus[[i for i, u in enumerate(corpus) if u.text not in texts]]


def training_corpus(n_utterances: int = 1800):
    """The training split: :data:`TRAIN_SPEAKERS` speaking sentences of :data:`TRAIN_SEED`.

    Utterances whose sentence is also in the held-out set or in the first
    1000 sentences of seed 0 (the notebooks' default corpus) are dropped.
    """
    return _corpus_without(n_utterances, TRAIN_SEED, TRAIN_SPEAKERS,
                           {0: _NOTEBOOK_SENTENCES, HELD_OUT_SEED: 2000})


def held_out_corpus(n_utterances: int = 120, train_utterances: int = 1800):
    """Held-out utterances: :data:`HELD_OUT_SPEAKERS` speaking sentences never trained on.

    Args:
        train_utterances: the training corpus's size; of ``n_utterances`` synthesized,
            those whose sentence is among its first sentences are dropped.
    """
    return _corpus_without(n_utterances, HELD_OUT_SEED, HELD_OUT_SPEAKERS,
                           {TRAIN_SEED: train_utterances})


# --------------------------------------------------------------------------- targets

def mfcc_features(wavs: Sequence[np.ndarray], *, batch_size: int = 32) -> list[torch.Tensor]:
    """MFCC + deltas + delta-deltas at the tiny model's frames, normalised per utterance
    (``docs/zoo.md``): one ``(conv_lengths([num_samples]), 39)`` tensor per 16 kHz waveform,
    computed in length-sorted batches (a valid frame never sees padding)."""
    torchaudio = _deps.torchaudio()

    transform = torchaudio.transforms.MFCC(
        sample_rate=16000, n_mfcc=13, log_mels=True,
        melkwargs=dict(n_fft=400, win_length=400, hop_length=320, n_mels=40, center=False))
    lens = [int(np.asarray(w).shape[0]) for w in wavs]
    frames = conv_lengths(lens).tolist()
    out: list[torch.Tensor | None] = [None] * len(lens)
    order = np.argsort(lens, kind="stable")
    for s in range(0, len(order), batch_size):
        idx = [int(i) for i in order[s: s + batch_size]]
        batch, _ = _pad([np.asarray(wavs[i]) for i in idx])
        batch = F.pad(batch, (0, max(0, 400 - batch.shape[1])))  # at least one window
        with torch.no_grad():
            m = transform(batch)  # (batch, 13, frames)
        for j, i in enumerate(idx):
            n = frames[i]
            if n == 0:
                out[i] = torch.zeros(0, 39)
                continue
            c = m[j, :, :n]
            d1 = torchaudio.functional.compute_deltas(c[None])[0]
            d2 = torchaudio.functional.compute_deltas(d1[None])[0]
            f = torch.cat([c, d1, d2]).T
            out[i] = (f - f.mean(0)) / (f.std(0, unbiased=False) + 1e-5)
    return out


def kmeans(x: torch.Tensor, k: int, *, iters: int = 20, seed: int = 0
           ) -> tuple[torch.Tensor, torch.Tensor]:
    """k-means (k-means++ initialisation, Lloyd iterations) of ``(num_points, dim)`` ``x``:
    ``(centroids (k, dim), assignment (num_points,) long)``."""
    if x.dim() != 2 or x.shape[0] < k:
        raise ValueError(f"x must be (num_points >= k={k}, dim), got {tuple(x.shape)}")
    g = torch.Generator().manual_seed(seed)
    x = x.float()
    first = int(torch.randint(x.shape[0], (1,), generator=g))
    cent = [x[first]]
    d2 = ((x - cent[0]) ** 2).sum(1)
    for _ in range(1, k):
        i = int(torch.multinomial(d2 / d2.sum(), 1, generator=g))
        cent.append(x[i])
        d2 = torch.minimum(d2, ((x - x[i]) ** 2).sum(1))
    c = torch.stack(cent)
    for _ in range(iters):
        assign = torch.cdist(x, c).argmin(1)
        sums = torch.zeros_like(c).index_add_(0, assign, x)
        counts = torch.bincount(assign, minlength=k).float()
        empty = counts == 0
        c = torch.where(empty[:, None], c, sums / counts.clamp(min=1)[:, None])
    assign = torch.cdist(x, c).argmin(1)
    return c, assign


def _cluster_targets(feats: list[torch.Tensor], k: int, seed: int,
                     max_points: int = 40000) -> list[torch.Tensor]:
    """The k-means cluster of every frame (k-means of at most ``max_points`` frames)."""
    allf = torch.cat(feats)
    g = torch.Generator().manual_seed(seed)
    if allf.shape[0] > max_points:
        allf = allf[torch.randperm(allf.shape[0], generator=g)[:max_points]]
    centroids, _ = kmeans(allf, k, seed=seed)
    return [torch.cdist(f, centroids).argmin(1) if len(f) else torch.zeros(0, dtype=torch.long)
            for f in feats]


@torch.no_grad()
def _layer_features(model: TinyUpstream, corpus, layer: int, device) -> list[torch.Tensor]:
    """Hidden states of ``layer`` per utterance, standardised over the corpus."""
    model = model.to(device).eval()
    out = [None] * len(corpus)
    for batch in _batches([u.wav.size for u in corpus], 60.0, None):
        wavs, wavs_len = _pad([corpus[i].wav for i in batch])
        all_hs, all_len = model(wavs.to(device), wavs_len.to(device))
        for j, i in enumerate(batch):
            out[i] = all_hs[layer][j, : int(all_len[layer][j])].float().cpu()
    allf = torch.cat(out)
    mu, sd = allf.mean(0), allf.std(0) + 1e-5
    return [(h - mu) / sd for h in out]


# --------------------------------------------------------------------------- the task

def span_mask(x_len: torch.Tensor, mask_prob: float, span: int, generator: torch.Generator,
              seq_len: int | None = None) -> torch.Tensor:
    """Spans to mask, as in wav2vec 2.0 / HuBERT: ``(batch_size, seq_len)`` bool, True on
    masked valid frames.

    Args:
        mask_prob, span: the fraction of frames that start a span (at least one span per
            utterance with a frame) and its length in frames.
        generator, seq_len: where the starts are drawn from; the width (default: the
            longest ``x_len``).
    """
    seq_len = int(x_len.max()) if seq_len is None else seq_len
    mask = torch.zeros(len(x_len), seq_len, dtype=torch.bool)
    for b, n in enumerate(x_len.tolist()):
        if n == 0:
            continue
        s = min(span, n)
        num = max(1, int(mask_prob * n / 1.0 + float(torch.rand((), generator=generator))))
        starts = torch.randint(0, n - s + 1, (num,), generator=generator)
        for st in starts.tolist():
            mask[b, st: st + s] = True
    return mask


def _pad(wavs: Sequence[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
    lens = torch.tensor([w.size for w in wavs], dtype=torch.long)
    out = torch.zeros(len(wavs), int(lens.max()))
    for i, w in enumerate(wavs):
        out[i, : w.size] = torch.from_numpy(np.asarray(w, dtype=np.float32))
    return out, lens


def _batches(num_samples: Sequence[int], max_seconds: float, generator: torch.Generator | None
             ) -> list[list[int]]:
    """Length-sorted batches of at most ``max_seconds`` padded audio; shuffled if a generator."""
    order = np.argsort(np.asarray(num_samples), kind="stable")
    if generator is not None:  # jitter the sort so batches differ between epochs
        noise = torch.rand(len(order), generator=generator).numpy() * 8000
        order = np.argsort(np.asarray(num_samples) + noise, kind="stable")
    batches, cur, cur_max = [], [], 0
    for i in order:
        n = int(num_samples[i])
        if cur and max(cur_max, n) * (len(cur) + 1) > max_seconds * 16000:
            batches.append(cur)
            cur, cur_max = [], 0
        cur.append(int(i))
        cur_max = max(cur_max, n)
    if cur:
        batches.append(cur)
    if generator is not None:
        perm = torch.randperm(len(batches), generator=generator).tolist()
        batches = [batches[p] for p in perm]
    return batches


SPEED_RATES = (14000, 15000, 17000, 18000)
"""Resampling targets of the speed perturbation (played back at 16 kHz: speed, pitch and
formants scaled by 16000 / rate, i.e. x1.14, x1.07, x0.94, x0.89)."""


def speed_perturb(wav: torch.Tensor, target: torch.Tensor, rate: int
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """Resample ``wav`` to ``rate`` (played back at 16 kHz; 16000 changes nothing) and map
    its frame targets: ``(wav', target')``, ``len(target') == conv_lengths([len(wav')])``.

    Frame ``j`` of the perturbed waveform (centre ``320 j + 200``) takes the target
    of the original frame whose centre is nearest to ``(320 j + 200) * 16000 / rate``,
    so the model learns to undo a change of vocal-tract length and pitch (ContentVec).
    """
    torchaudio = _deps.torchaudio()

    if rate == 16000 or len(target) == 0:
        return wav, target
    new = torchaudio.functional.resample(wav, 16000, int(rate))
    n = int(conv_lengths([new.shape[0]])[0])
    if n == 0:
        return wav, target
    centre = (torch.arange(n, dtype=torch.float64) * 320 + 200) * (16000 / rate)
    k = torch.round((centre - 200) / 320).long().clamp(0, len(target) - 1)
    return new, target[k]


class _HubertTask(nn.Module):
    """Masked prediction of cluster ids on top of a :class:`TinyUpstream`."""

    def __init__(self, upstream: TinyUpstream, num_clusters: int, num_speakers: int = 0):
        super().__init__()
        self.upstream = upstream
        h = upstream.config.hidden_size
        self.mask_emb = nn.Parameter(torch.empty(h).uniform_(-0.5, 0.5))
        # ContentVec's speaker conditioning: the head also sees a learned embedding of
        # the speaker, so the last layer need not carry the voice to predict targets
        # that depend on it (MFCC clusters do)
        self.spk_emb = nn.Embedding(num_speakers, h) if num_speakers else None
        self.head = nn.Linear(2 * h if num_speakers else h, num_clusters)

    def forward(self, wavs, wavs_len, targets, mask, unmasked_weight: float, speakers=None):
        x, x_len = self.upstream.features(wavs, wavs_len)
        t = x.shape[1]
        mask = mask[:, :t].to(x.device)
        x = torch.where(mask[..., None], self.mask_emb.to(x.dtype), x)
        h = self.upstream.encode(x, x_len)[-1]
        if self.spk_emb is not None:
            e = self.spk_emb(speakers.to(x.device))[:, None, :].expand(-1, t, -1)
            h = torch.cat([h, e.to(h.dtype)], dim=-1)
        logits = self.head(h)
        valid = torch.arange(t, device=x.device)[None] < x_len[:, None]
        tgt = targets[:, :t].to(x.device)
        m = mask & valid
        u = ~mask & valid
        loss_m = F.cross_entropy(logits[m], tgt[m])
        acc_m = (logits[m].argmax(-1) == tgt[m]).float().mean()
        loss = loss_m
        if unmasked_weight > 0 and u.any():
            loss = loss + unmasked_weight * F.cross_entropy(logits[u], tgt[u])
        return loss, loss_m.detach(), acc_m.detach()


def _lr_at(step: int, steps: int, lr: float, warmup: int) -> float:
    """Linear warm-up, then cosine decay to 0 at ``steps``."""
    if step < warmup:
        return lr * (step + 1) / warmup
    p = (step - warmup) / max(1, steps - warmup)
    return lr * 0.5 * (1 + math.cos(math.pi * min(1.0, p)))


@dataclass(frozen=True)
class TrainConfig:
    """Hyper-parameters of :func:`train` (the command line's flags, ``docs/zoo.md``):
    ``architecture`` None is ``TinyConfig()`` (iteration 2 keeps ``init``'s); ``iteration``
    2 clusters ``init``'s hidden states at ``target_layer`` (default: the middle one);
    ``speed`` is the probability of :func:`speed_perturb`; ``speaker_conditioning``: the
    head also reads a learned speaker embedding (ContentVec)."""

    steps: int = 2000
    seed: int = 0
    architecture: TinyConfig | None = None
    clusters: int = 50
    lr: float = 2e-3
    warmup: int | None = None
    batch_seconds: float = 12.0
    mask_prob: float = 0.05
    mask_span: int = 5
    unmasked_weight: float = 0.5
    speed: float = 0.5
    iteration: int = 1
    speaker_conditioning: bool = False
    target_layer: int | None = None


def train(corpus, config: TrainConfig = TrainConfig(), *, device=None,
          init: TinyUpstream | None = None, max_minutes: float | None = None, log=print,
          log_every: int = 25, checkpoint=None,
          checkpoint_every: int = 0) -> tuple[TinyUpstream, dict]:
    """Train a :class:`TinyUpstream` on ``corpus`` with HuBERT's masked cluster prediction:
    ``(model, summary)``, the upstream in eval mode on the CPU and what happened.

    Args:
        init: the iteration-1 model (``config.iteration=2``).
        max_minutes: stop (the summary says so) past this wall time.
        log, log_every: called with a progress line every ``log_every`` steps.
        checkpoint_every: steps between ``checkpoint(step, upstream)`` calls (0: never).
    """
    c = config
    steps, seed, clusters, lr, speed = c.steps, c.seed, c.clusters, c.lr, c.speed
    t0 = time.time()
    device = _resolve_device(device)
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    lens = [u.wav.size for u in corpus]

    # targets
    if c.iteration == 1:
        feats = mfcc_features([u.wav for u in corpus])
        source = "MFCC+deltas (39 dims, 20 ms frames, per-utterance CMVN)"
    elif c.iteration == 2:
        if init is None:
            raise ValueError("iteration=2 needs init= (the iteration-1 model)")
        layer = init.num_layer // 2 if c.target_layer is None else int(c.target_layer)
        feats = _layer_features(init, corpus, layer, device)
        source = f"hidden state {layer} of the iteration-1 model (standardised)"
    else:
        raise ValueError(f"iteration must be 1 or 2, got {c.iteration!r}")
    for f, n in zip(feats, lens):
        if f.shape[0] != int(conv_lengths([n])[0]):
            raise RuntimeError("target frames do not match conv_lengths")
    targets = _cluster_targets(feats, clusters, seed)
    t_targets = time.time() - t0
    log(f"targets: {source}, {clusters} clusters, {sum(len(t) for t in targets)} frames, "
        f"{t_targets:.1f}s")

    upstream = TinyUpstream((c.architecture or TinyConfig()) if init is None else init.config,
                            name="tiny")
    if init is not None:
        upstream.load_state_dict(init.state_dict())
    voices = sorted({u.speaker for u in corpus})
    speaker_ids = torch.tensor([voices.index(u.speaker) for u in corpus])
    task = _HubertTask(upstream, clusters, len(voices) if c.speaker_conditioning else 0).to(device)
    task.train()
    decay, no_decay = [], []
    for n, p in task.named_parameters():
        (no_decay if p.dim() < 2 or "norm" in n else decay).append(p)
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.01},
                             {"params": no_decay, "weight_decay": 0.0}],
                            lr=lr, betas=(0.9, 0.98), eps=1e-6)
    warmup = max(1, steps // 10) if c.warmup is None else c.warmup

    history, running = [], []  # running: (loss, masked loss, masked accuracy) since the last log
    step, epoch, stopped_early = 0, 0, False
    t_train = time.time()
    while step < steps and not stopped_early:
        for batch in _batches(lens, c.batch_seconds, gen):
            if step >= steps:
                break
            if max_minutes is not None and (time.time() - t0) > 60 * max_minutes:
                stopped_early = True
                log(f"stopping early at step {step}: past {max_minutes} minutes")
                break
            items = []
            for i in batch:
                w, t = torch.from_numpy(corpus[i].wav), targets[i]
                if speed > 0 and float(torch.rand((), generator=gen)) < speed:
                    rate = SPEED_RATES[int(torch.randint(len(SPEED_RATES), (), generator=gen))]
                    w, t = speed_perturb(w, t, rate)
                items.append((w, t))
            wavs, wavs_len = _pad([w.numpy() for w, _ in items])
            x_len = conv_lengths(wavs_len)
            tgt = torch.full((len(batch), int(x_len.max())), -100, dtype=torch.long)
            for j, (_, t) in enumerate(items):
                tgt[j, : len(t)] = t
            mask = span_mask(x_len, c.mask_prob, c.mask_span, gen)
            for g in opt.param_groups:
                g["lr"] = _lr_at(step, steps, lr, warmup)
            loss, loss_m, acc_m = task(wavs.to(device), wavs_len.to(device), tgt, mask,
                                       c.unmasked_weight, speaker_ids[list(batch)])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(task.parameters(), 5.0)
            opt.step()
            step += 1
            running.append((float(loss.detach()), float(loss_m), float(acc_m)))
            if step % log_every == 0 or step == steps:
                loss_avg, masked_avg, acc_avg = (sum(v) / len(running) for v in zip(*running))
                seconds = time.time() - t0
                history.append({"step": step, "epoch": epoch, "loss": loss_avg,
                                "masked_loss": masked_avg, "masked_acc": acc_avg, "seconds": seconds})
                log(f"step {step:5d}  epoch {epoch}  loss {loss_avg:.3f}  masked loss {masked_avg:.3f}  "
                    f"masked acc {acc_avg:.3f}  lr {opt.param_groups[0]['lr']:.2e}  {seconds:.0f}s")
                running = []
            if checkpoint is not None and checkpoint_every and step % checkpoint_every == 0:
                checkpoint(step, task.upstream)
        epoch += 1
    upstream = task.upstream.cpu().eval()
    summary = {
        "objective": f"HuBERT iteration {c.iteration}: masked prediction of k-means cluster ids",
        "targets": source, "clusters": clusters, "steps": step, "steps_planned": steps,
        "epochs": epoch, "stopped_early": stopped_early, "seed": seed, "device": str(device),
        "threads": torch.get_num_threads(), "lr": lr, "warmup": warmup,
        "batch_seconds": c.batch_seconds, "mask_prob": c.mask_prob, "mask_span": c.mask_span,
        "unmasked_weight": c.unmasked_weight, "speed_perturb": speed,
        "speaker_conditioning": c.speaker_conditioning, "utterances": len(corpus),
        "audio_minutes": sum(lens) / 16000 / 60, "target_seconds": t_targets,
        "train_seconds": time.time() - t_train, "total_seconds": time.time() - t0,
        "history": history,
    }
    return upstream, summary


# --------------------------------------------------------------------------- held-out probes

def probe_comparison(upstreams: dict[str, nn.Module], corpus, *, device=None,
                     speaker_folds: int = 5, seed: int = 0) -> pd.DataFrame:
    """Phone (frame) and speaker (utterance) ridge probes of every layer of each upstream on
    ``corpus``: :func:`s3viz.probe_layers`'s columns plus ``model``. Phones: one fold per
    speaker (tested on an unseen voice); speakers: mean-pooled, folds by utterance.

    Args:
        upstreams, speaker_folds: ``{name: upstream}``; folds of the speaker probe.
    """
    import pandas as pd

    from ..extraction import extract
    from ..probe import probe_layers

    n_speakers = len({u.speaker for u in corpus})
    rows = []
    for name, up in upstreams.items():
        store = extract(up, corpus, device=device, progress=False)
        phone = probe_layers(store, "phone", level="frame", method="ridge",
                             folds=max(2, n_speakers), split_by="speaker", device=device,
                             seed=seed)
        spk = probe_layers(store, "speaker", level="utterance", method="ridge",
                           folds=speaker_folds, split_by="utterance", device=device, seed=seed)
        for df in (phone, spk):
            df = df.copy()
            df.insert(0, "model", name)
            rows.append(df)
    return pd.concat(rows, ignore_index=True)


def best_layers(results: pd.DataFrame) -> pd.DataFrame:
    """Best layer per model and target from :func:`probe_comparison`: ``model, target,
    layer, accuracy``; a model whose probes were refused at every layer of a target (NaN
    accuracy, e.g. the spectral baseline's speakers: per-utterance CMVN makes every
    mean-pooled feature zero) has no row for it."""
    idx = results.dropna(subset=["accuracy"]).groupby(["model", "target"])["accuracy"].idxmax()
    return results.loc[idx, ["model", "target", "layer", "accuracy", "chance"]].reset_index(
        drop=True)


def bar_check(results: pd.DataFrame, model: str = "tiny", random: str = "random",
              baseline: str = "spectral") -> pd.DataFrame:
    """Differences of best-layer accuracies (in points) between ``model`` and the others:
    one row per target, ``target, <model>, <random>, <baseline>`` (best-layer accuracies
    in %, with ``<name>_layer``), ``vs_random``, ``vs_baseline`` and ``bar_met`` (both
    differences >= 10 points).

    Args:
        random: the name of the random-weights model in ``results``.
    """
    import pandas as pd

    best = best_layers(results)
    rows = []
    for target, g in best.set_index("model").groupby("target", sort=False):
        row = {"target": target}
        for m in (model, random, baseline):
            row[m] = 100 * float(g["accuracy"].get(m, float("nan")))
            row[f"{m}_layer"] = int(g["layer"].get(m, -1))
        row["vs_random"] = row[model] - row[random]
        row["vs_baseline"] = row[model] - row[baseline]
        row["bar_met"] = bool(row["vs_random"] >= 10 and row["vs_baseline"] >= 10)
        rows.append(row)
    return pd.DataFrame(rows)


def curve_check(results: pd.DataFrame, model: str = "tiny") -> pd.DataFrame:
    """The shape of ``model``'s held-out layer curves against the bar a lesson needs (they
    must answer "which layer?" by more than probe noise): a DataFrame ``criterion, value,
    needed, met`` (points of accuracy, or a layer) for ``phone_unique_best`` (the best
    phone layer beats the runner-up by >= 1), ``phone_over_layer0`` (... and layer 0 by
    >= 10), ``speaker_lower_half`` (the best speaker layer is ``<= top // 2``) and
    ``speaker_falls`` (speaker accuracy falls by >= 15 from its best layer to the top).
    """
    import pandas as pd

    res = results[results["model"] == model]
    phone = res[res["target"] == "phone"].set_index("layer")["accuracy"].sort_index() * 100
    spk = res[res["target"] == "speaker"].set_index("layer")["accuracy"].sort_index() * 100
    if phone.empty or spk.empty:
        raise ValueError(f"results have no phone and speaker rows for model {model!r}")
    order = phone.sort_values(ascending=False)
    top = int(spk.index.max())
    rows = [
        ("phone_unique_best", float(order.iloc[0] - order.iloc[1]), 1.0),
        ("phone_over_layer0", float(order.iloc[0] - phone.loc[phone.index.min()]), 10.0),
        ("speaker_lower_half", float(spk.idxmax()), float(top // 2)),
        ("speaker_falls", float(spk.max() - spk.loc[top]), 15.0),
    ]
    df = pd.DataFrame(rows, columns=["criterion", "value", "needed"])
    df["met"] = [v <= n if c == "speaker_lower_half" else v >= n
                 for c, v, n in rows]
    df.attrs["best_phone_layer"] = int(order.index[0])
    return df


def _layer_table(results: pd.DataFrame, target: str) -> list[str]:
    """Markdown rows: accuracy (%) per layer of each model for one target."""
    sub = results[results["target"] == target]
    width = int(sub["layer"].max()) + 1
    lines = ["| model | " + " | ".join(f"layer {i}" for i in range(width)) + " |",
             "|---|" + "---|" * width]
    for m, g in sub.groupby("model", sort=False):
        acc = [f"{100 * a:.1f}" if a == a else "refused" for a in g.sort_values("layer")["accuracy"]]
        acc += [""] * (width - len(acc))
        lines.append(f"| {m} | " + " | ".join(acc) + " |")
    return lines


def model_card(summary: dict, results: pd.DataFrame | None = None,
               extra: str = "") -> str:
    """The text of ``MODEL_CARD.md``.

    Args:
        summary: :func:`train`'s, with what :func:`main` adds (``config``, ``sha256`` ...).
    """
    split = summary["split"]
    lines = [
        "# s3viz tiny upstream",
        "",
        "`s3viz.zoo.tiny(pretrained=True)`: a wav2vec2/HuBERT-shaped upstream small enough "
        "to ship inside the package, trained self-supervised on the embedded synthetic "
        "(eSpeak NG) corpus so that offline lessons have learned layers. "
        "`tiny(pretrained=False)` is the same architecture with seeded random weights.",
        "",
        "## Weights",
        "",
        f"- file: `s3viz/zoo/tiny.pt` ({summary['size_bytes'] / 1e6:.2f} MB, "
        f"{summary.get('weights_dtype', 'float16')} tensors, read with "
        "`torch.load(weights_only=True)`)",
        f"- sha256: `{summary['sha256']}`",
        "",
        "## Architecture",
        "",
    ]
    cfg = summary["config"]
    lines += [
        f"- waveform normalised per utterance; wav2vec2 convolution stack "
        f"{cfg['conv_layers']} (receptive field 400 samples, stride 320) with "
        f"{cfg['conv_channels']} channels, layer norm per frame, GELU",
        f"- projection to {cfg['hidden_size']} dims = hidden state 0; convolutional "
        f"positional encoding (kernel {cfg['pos_conv_kernel']}, {cfg['pos_conv_groups']} groups)",
        f"- {cfg['num_layers']} "
        + ("pre-LN transformer layers with a final layer norm"
           if cfg.get("layer_norm_first", True) else
           "post-LN transformer layers (HuBERT base's placement; the input is layer-normed)")
        + f" ({cfg['num_heads']} heads, "
        f"feed-forward {cfg['ffn_size']}) with key-padding masks = hidden states "
        f"1..{cfg['num_layers']}",
        f"- {summary['parameters']:,} parameters; 320 samples per frame; frame counts "
        "`(wavs_len - 400) // 320 + 1` (`s3viz.align.conv_lengths`)",
        "",
        "## Data",
        "",
        f"- training: {summary['utterances']} utterances ({summary['audio_minutes']:.1f} min) "
        f"of `s3viz.data.synthetic_corpus(seed={split['train_sentence_seed']})` sentences "
        f"spoken by {len(split['train_speakers'])} voices: "
        + ", ".join(f"{k} ({v})" for k, v in split["train_speakers"].items()),
        "- held out entirely: speakers "
        + ", ".join(f"{k} ({v})" for k, v in split["held_out_speakers"].items())
        + " (no eSpeak variant of theirs is used in training) and sentences of seed "
        f"{split['held_out_sentence_seed']} (any sentence also in training dropped); "
        "the first 1000 sentences of seed 0 (the notebooks' default corpus) were also "
        "kept out of training",
        "",
        "## Objective and training",
        "",
        f"- {summary['objective']}; targets: {summary['targets']}, "
        f"{summary['clusters']} k-means clusters",
        f"- span masking of hidden state 0: start probability {summary['mask_prob']}, "
        f"span {summary['mask_span']} frames; cross-entropy of a linear head on the last "
        f"layer on masked frames (+ {summary['unmasked_weight']} x unmasked frames)"
        + ("; the head also reads a learned speaker embedding (ContentVec's speaker "
           "conditioning)" if summary.get("speaker_conditioning") else ""),
        f"- speed perturbation (ContentVec-style): with probability {summary['speed_perturb']} "
        "an utterance is resampled to 14, 15, 17 or 18 kHz and played at 16 kHz (tempo, "
        "pitch and formants x0.89-x1.14) while the targets stay those of the original audio",
        f"- AdamW, peak lr {summary['lr']}, {summary['warmup']} warm-up steps, cosine decay; "
        f"batches of <= {summary['batch_seconds']} s padded audio; seed {summary['seed']}",
        f"- {summary['steps']} steps ({summary['epochs']} epochs) on {summary['device']} "
        f"({summary['threads']} threads): {summary['total_seconds'] / 60:.1f} min "
        f"(targets {summary['target_seconds']:.0f} s)"
        + (" (stopped early on time)" if summary["stopped_early"] else ""),
    ]
    hist = summary.get("history") or []
    if hist:
        lines.append(f"- masked loss {hist[0]['masked_loss']:.3f} -> "
                     f"{hist[-1]['masked_loss']:.3f}, masked accuracy "
                     f"{hist[0]['masked_acc']:.3f} -> {hist[-1]['masked_acc']:.3f}")
    lines += ["", f"Reproduce: `python -m s3viz.zoo.train_tiny {summary.get('argv', '')}`", ""]
    if results is not None:
        bar = bar_check(results)
        lines += [
            "## Held-out probes",
            "",
            "Held-out corpus (`s3viz.zoo.train_tiny.held_out_corpus()`): "
            f"{summary.get('eval_utterances', '?')} utterances, held-out speakers and sentences. "
            "Ridge probes (`s3viz.probe_layers`): phones per frame with one fold per speaker "
            "(`split_by='speaker'`: tested on an unseen voice); speakers on mean-pooled "
            "features, 5 folds by utterance. Best layer per model (accuracy %):",
            "",
            "| target | tiny (layer) | random weights (layer) | spectral (layer) | "
            "tiny - random | tiny - spectral |",
            "|---|---|---|---|---|---|",
        ]
        def cell(v, layer=None, sign=""):  # a model refused at every layer: "refused"
            if v != v:
                return "refused" if layer is not None else "-"
            return f"{v:{sign}.1f}" + (f" ({layer})" if layer is not None else "")

        for _, r in bar.iterrows():
            lines.append(
                f"| {r['target']} | " + " | ".join(
                    [cell(r[m], r[f"{m}_layer"]) for m in ("tiny", "random", "spectral")]
                    + [cell(r["vs_random"], sign="+"), cell(r["vs_baseline"], sign="+")])
                + " |")
        lines += ["", "Phone accuracy per layer (%):", ""] + _layer_table(results, "phone")
        lines += ["", "Speaker accuracy per layer (%):", ""] + _layer_table(results, "speaker")
        shape = curve_check(results)
        lines += ["", "Shape of the tiny model's curves (points; the bar a lesson needs):", "",
                  "| criterion | value | needed | met |", "|---|---|---|---|"]
        for _, r in shape.iterrows():
            op = "<=" if r["criterion"] == "speaker_lower_half" else ">="
            lines.append(f"| {r['criterion']} | {r['value']:.1f} | {op} {r['needed']:.0f} | "
                         f"{'yes' if r['met'] else 'no'} |")
        lines.append("")
    if extra:
        lines += [extra, ""]
    lines += ["## Limits", "",
              "Trained on minutes of synthetic speech from a formant synthesizer: it has "
              "learned eSpeak's phones, not natural speech. Use it to teach and test "
              "analyses offline, not as a speech representation for real data.", ""]
    return "\n".join(lines)


# --------------------------------------------------------------------------- command line

_TRAIN_FLAGS = {"steps": "optimizer steps (default 2000)", "seed": None, "clusters": None,
                "lr": None, "batch_seconds": "padded audio per batch in seconds (default 12)",
                "mask_prob": None, "mask_span": None, "unmasked_weight": None}
"""The :class:`TrainConfig` fields that are plain flags (``--batch-seconds``), with their help."""
_ARCH_FLAGS = ("conv_channels", "hidden_size", "num_layers", "num_heads", "ffn_size", "dropout")


def _flags(group, config, names) -> None:
    """``--<name>`` for each field ``names`` of ``config``, typed and defaulted by its value."""
    for name in names:
        value = getattr(config, name)
        group.add_argument("--" + name.replace("_", "-"), type=type(value), default=value,
                           help=names[name] if isinstance(names, dict) else None)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m s3viz.zoo.train_tiny", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    t = TrainConfig()
    _flags(p, t, _TRAIN_FLAGS)
    p.add_argument("--out", type=Path, default=None,
                   help=f"weights file to write (default: build/tiny.pt; the shipped file is "
                        f"{WEIGHTS_PATH})")
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    p.add_argument("--utterances", type=int, default=1800,
                   help="training utterances synthesized (default 1800)")
    p.add_argument("--speed-perturb", dest="speed", type=float, default=t.speed,
                   help="probability of speed-perturbing an utterance (default 0.5)")
    p.add_argument("--iteration", type=int, default=t.iteration, choices=(1, 2))
    p.add_argument("--speaker-conditioning", action="store_true",
                   help="the prediction head also reads a speaker embedding (ContentVec)")
    p.add_argument("--init", type=Path, default=None,
                   help="weights of the iteration-1 model (iteration 2)")
    p.add_argument("--target-layer", type=int, default=None)
    p.add_argument("--max-minutes", type=float, default=28.0,
                   help="stop past this wall time even if steps remain (default 28)")
    p.add_argument("--fp32", action="store_true", help="store float32 (default float16)")
    p.add_argument("--save-every", type=int, default=0,
                   help="also save weights every N steps (OUT.stepN.pt)")
    p.add_argument("--no-eval", action="store_true",
                   help="skip the held-out probes (the model card then has no probe table)")
    p.add_argument("--eval-utterances", type=int, default=120,
                   help="held-out utterances synthesized for the probes (default 120)")
    p.add_argument("--card", type=Path, default=None,
                   help="model card to write (default: MODEL_CARD.md beside --out)")
    g = p.add_argument_group("architecture (defaults: TinyConfig())")
    _flags(g, TinyConfig(), _ARCH_FLAGS)
    g.add_argument("--post-ln", action="store_true",
                   help="post-LN transformer layers (HuBERT base) instead of pre-LN")
    return p


def main(argv: Sequence[str] | None = None) -> dict:
    """Command line entry point (``docs/zoo.md``); returns the training summary."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _parser().parse_args(argv)
    if args.steps < 1:
        raise SystemExit("--steps must be >= 1")
    out = args.out if args.out is not None else Path("build") / "tiny.pt"
    t0 = time.time()
    corpus = training_corpus(args.utterances)
    print(f"training split: {len(corpus)} utterances, "
          f"{sum(u.wav.size for u in corpus) / 16000 / 60:.1f} min, "
          f"{len({u.speaker for u in corpus})} voices ({time.time() - t0:.1f}s)", flush=True)
    init = tiny(checkpoint=args.init) if args.init is not None else None
    architecture = TinyConfig(**{k: getattr(args, k) for k in _ARCH_FLAGS},
                              layer_norm_first=not args.post_ln)
    config = TrainConfig(architecture=architecture, **{
        k: getattr(args, k) for k in (*_TRAIN_FLAGS, "speed", "iteration",
                                      "speaker_conditioning", "target_layer")})
    model, summary = train(
        corpus, config, device=args.device, init=init, max_minutes=args.max_minutes,
        log=lambda s: print(s, flush=True), checkpoint_every=args.save_every,
        checkpoint=lambda step, up: save_tiny_weights(up, out.with_suffix(f".step{step}.pt")))
    dtype = torch.float32 if args.fp32 else torch.float16
    summary.update(data_seconds=time.time() - t0 - summary["total_seconds"], split=data_split(),
                   config=model.config.to_dict(),
                   parameters=sum(p.numel() for p in model.parameters()), argv=" ".join(argv),
                   weights_dtype=str(dtype).replace("torch.", ""))
    meta = {k: summary[k] for k in ("objective", "steps", "seed", "clusters", "utterances")}
    sha = save_tiny_weights(model, out, dtype=dtype, meta=meta)
    summary.update(weights=str(out), sha256=sha, size_bytes=out.stat().st_size)
    print(f"wrote {out} ({summary['size_bytes'] / 1e6:.2f} MB, sha256 {sha}); "
          f"{summary['total_seconds'] / 60:.1f} min", flush=True)
    results = None
    folder = OwnedFolder(out.parent, "the weights folder")
    if not args.no_eval:
        import s3viz.upstreams as ups

        held = held_out_corpus(args.eval_utterances, train_utterances=args.utterances)
        summary["eval_utterances"] = len(held)
        trained = tiny(checkpoint=out)  # evaluate what was saved (float16 round trip)
        random = tiny(pretrained=False, config=trained.config)
        results = probe_comparison({"tiny": trained, "random": random,
                                    "spectral": ups.spectral_upstream()}, held)
        folder.write_with(out.with_suffix(".probes.csv").name,
                          lambda f: results.to_csv(f, index=False), text=True)
        for key, table in (("bar", bar_check(results)), ("curve_check", curve_check(results))):
            summary[key] = table.to_dict(orient="records")
            print(table.to_string(index=False), flush=True)
    side = folder.write_text(out.with_suffix(".json").name, json.dumps(summary, indent=1))
    card = Path(args.card) if args.card is not None else out.with_name("MODEL_CARD.md")
    card = OwnedFolder(card.parent, "--card's folder").write_text(
        card.name, model_card(summary, results))
    print(f"wrote {side} and {card}", flush=True)
    return summary


if __name__ == "__main__":
    main(sys.argv[1:])
