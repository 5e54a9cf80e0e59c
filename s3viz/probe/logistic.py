"""The logistic probe: softmax classifiers of many layers trained as one batch (Adam
with early stopping, or full-batch L-BFGS; ``docs/probes.md``), each layer read through
the guard of every measure (:func:`s3viz._numerics.layer_guard`): a degenerate layer
gives NaN scores and one warning."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from .. import _validate as _v
from .._numerics import Moments, float32_distances_span, layer_guard, read_dtype, safe_scale
from .folds import fold_class_counts
from .ridge import confusion_matrix
from .targets import ProbeTask

@dataclass(frozen=True)
class LogisticOptions:
    """Training of the logistic probe (``probe_layers(method=LogisticOptions(...))``).

    Adam on minibatches of ``batch_frames`` examples, at least 200 steps and at most
    ``max_epochs`` epochs otherwise; ``weight_decay=None`` is ``1 / n_train``, the L2
    penalty of scikit-learn's ``C=1``; ``dev_fraction`` of the training groups is held
    out, the dev loss is checked every ~20 steps and each classifier keeps its best
    weights, training stops when none improved for ``patience`` checks.
    ``dev_fraction=0``: no dev split, full-batch L-BFGS to the optimum of the penalised
    objective on the whole training part (at most ``max_epochs * 25`` iterations;
    ``lr``, ``batch_frames`` and ``patience`` unused); sharded runs need it.
    ``max_memory``: bytes of features the probe may hold on the device.
    """

    lr: float = 1e-2
    batch_frames: int = 1024
    max_epochs: int = 40
    patience: int = 3
    weight_decay: float | None = None
    dev_fraction: float = 0.15
    max_memory: int = 2 ** 31

    name = "logistic"

    def __post_init__(self):
        for field, value in (
                ("lr", _v.number(self.lr, "lr", positive=True)),
                ("batch_frames", _v.integer(self.batch_frames, "batch_frames")),
                ("max_epochs", _v.integer(self.max_epochs, "max_epochs")),
                ("patience", _v.integer(self.patience, "patience")),
                ("weight_decay", _v.number(self.weight_decay, "weight_decay", nonnegative=True,
                                           none_ok=True)),
                ("max_memory", _v.integer(self.max_memory, "max_memory"))):
            object.__setattr__(self, field, value)
        dev = self.dev_fraction
        if isinstance(dev, bool) or not isinstance(dev, (int, float)) or not 0 <= dev < 1:
            raise ValueError(f"dev_fraction must be a number in [0, 1) (0: no early stopping, "
                             f"train to the optimum), got {dev!r}")
        object.__setattr__(self, "dev_fraction", float(dev))


def _logits(x, idx, w, b, mean, scale) -> torch.Tensor:
    """``(L, B, K * C)`` scores of rows ``idx``, standardised by ``mean`` and ``scale``."""
    return torch.baddbmm(b[:, None], (x[:, idx] - mean[:, None]) / scale[:, None], w)


def _log_likelihoods(z: torch.Tensor, t: torch.Tensor, k: int, c: int) -> torch.Tensor:
    """``(L, B, K, 1)`` log-likelihood of the true classes ``t`` ``(B, K)`` under scores ``z``."""
    logp = torch.log_softmax(z.view(z.shape[0], -1, k, c), -1)
    return logp.gather(-1, t[None, :, :, None].expand(z.shape[0], -1, -1, 1))


def _train_scaling(x: torch.Tensor, train: torch.Tensor, reduce=None):
    """Per layer mean and scale (population std, 1 for constant features) of rows ``train``
    (of the rows of all shards, merged with ``reduce``)."""
    mom = Moments((x.shape[0], x.shape[2]), device=x.device, axis=1)
    for i in range(0, int(train.numel()), 8192):
        mom.update(x[:, train[i:i + 8192]])
    if reduce is not None:
        mom = mom.reduced(reduce)
    # each feature judged against its own mean at float32's precision (x is float32); the
    # layer's dead features are zeros already (its guard, per_feature)
    return mom.mean.float(), safe_scale(mom.var.sqrt(), mean=mom.mean,
                                        eps=torch.finfo(torch.float32).eps).float()


def _fit_logistic_full(x: torch.Tensor, y: torch.Tensor, train: torch.Tensor, c: int, *,
                       weight_decay: float | None, max_iter: int, chunk: int = 8192,
                       tolerance_grad: float = 1e-4, history_size: int = 20, reduce=None):
    """All layers' (and heads') penalised softmax regressions to their optimum, full batch.

    Minimises ``mean NLL + weight_decay / 2 * ||W||^2`` per layer and head (bias not
    penalised) with L-BFGS on their sum, to a largest gradient entry under
    ``tolerance_grad`` (scikit-learn's ``tol``). With ``reduce`` (``train``: this
    shard's rows) the scaling, loss and gradients are summed over shards before every
    step. Returns as :func:`_fit_logistic`.
    """
    num_l, _, h = x.shape
    k = y.shape[0]
    n_train = int(train.numel())
    if reduce is not None:
        n_train = int(reduce(torch.tensor([n_train], dtype=torch.float64))[0])
    wd = 1.0 / max(n_train, 1) if weight_decay is None else float(weight_decay)
    mean, scale = _train_scaling(x, train, reduce)
    w = torch.zeros(num_l, h, k * c, device=x.device, requires_grad=True)
    b = torch.zeros(num_l, k * c, device=x.device, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=int(max_iter), history_size=history_size,
                            tolerance_grad=tolerance_grad, tolerance_change=1e-12,
                            line_search_fn="strong_wolfe")

    n_local = int(train.numel())

    def closure():
        opt.zero_grad()
        w.grad, b.grad = torch.zeros_like(w), torch.zeros_like(b)
        total = torch.zeros((), dtype=torch.float64, device=x.device)
        for i in range(0, n_local, chunk):
            idx = train[i:i + chunk]
            nll = -_log_likelihoods(_logits(x, idx, w, b, mean, scale), y[:, idx].T, k, c).sum()
            (nll / n_train).backward()
            total += nll.detach().double() / n_train
        if reduce is not None:  # every shard's data term, then the (shared) penalty
            reduce(w.grad), reduce(b.grad), reduce(total)
        pen = 0.5 * wd * (w * w).sum()
        pen.backward()
        return float(total) + float(pen.detach())

    with torch.enable_grad():
        opt.step(closure)
    return w.detach(), b.detach(), mean, scale


def _fit_logistic(x: torch.Tensor, y: torch.Tensor, train: torch.Tensor, dev: torch.Tensor,
                  c: int, *, seed: int, lr: float, batch_size: int, max_epochs: int,
                  patience: int, weight_decay: float | None, min_steps: int = 200):
    """Train softmax classifiers of all layers (and heads) at once: Adam, early stopping
    on rows ``dev``.

    Args:
        x: ``(num_layers, num_examples, hidden_size)`` float32 features on the device.
        y: ``(num_heads, num_examples)`` long targets (head 0 the target, 1 the control).

    Returns:
        ``(weight (L, H, K*C), bias (L, K*C), mean (L, H), scale (L, H))``.
    """
    num_l, _, h = x.shape
    k = y.shape[0]
    device = x.device
    n_train = int(train.numel())
    wd = 1.0 / n_train if weight_decay is None else float(weight_decay)
    mean, scale = _train_scaling(x, train)  # standardisation from the training part
    w = torch.zeros(num_l, h, k * c, device=device)
    b = torch.zeros(num_l, k * c, device=device)
    best_w, best_b = w.clone(), b.clone()
    best = torch.full((num_l, k), float("inf"), device=device)
    bad = torch.zeros(num_l, k, dtype=torch.long, device=device)
    # Adam state (written out: the gradient of softmax cross-entropy is analytic)
    mw, vw, mb, vb = (torch.zeros_like(w), torch.zeros_like(w), torch.zeros_like(b),
                      torch.zeros_like(b))
    beta1, beta2, eps = 0.9, 0.999, 1e-8
    step = 0
    gen = torch.Generator().manual_seed(int(seed))
    steps_per_epoch = max(1, math.ceil(n_train / batch_size))
    check_every = max(1, math.ceil(20 / steps_per_epoch))  # >= ~20 steps between checks
    max_epochs = max(int(max_epochs), math.ceil(min_steps / steps_per_epoch))
    ar = torch.arange(k, device=device)

    for epoch in range(max_epochs):
        perm = train[torch.randperm(n_train, generator=gen).to(device)]
        for i in range(0, n_train, batch_size):
            idx = perm[i:i + batch_size]
            xb = (x[:, idx] - mean[:, None]) / scale[:, None]  # (L, B, H)
            z = torch.baddbmm(b[:, None], xb, w).view(num_l, -1, k, c)
            g = torch.softmax(z, -1)
            t = y[:, idx].T  # (B, K)
            g[:, torch.arange(t.shape[0], device=device)[:, None], ar[None, :], t] -= 1.0
            g = g.view(num_l, -1, k * c) / idx.numel()
            gw = torch.bmm(xb.transpose(1, 2), g).add_(w, alpha=wd)
            gb = g.sum(1)
            step += 1
            c1, c2 = 1 - beta1 ** step, 1 - beta2 ** step
            for p, m, v, gr in ((w, mw, vw, gw), (b, mb, vb, gb)):
                m.mul_(beta1).add_(gr, alpha=1 - beta1)
                v.mul_(beta2).addcmul_(gr, gr, value=1 - beta2)
                p.addcdiv_(m, (v / c2).sqrt_().add_(eps), value=-lr / c1)
        if (epoch + 1) % check_every and epoch + 1 < max_epochs:
            continue
        dl = torch.zeros(num_l, k, device=device)
        for i in range(0, int(dev.numel()), 8192):
            idx = dev[i:i + 8192]
            ll = _log_likelihoods(_logits(x, idx, w, b, mean, scale), y[:, idx].T, k, c)
            dl -= ll.squeeze(-1).mean(1) * idx.numel()
        dl /= max(int(dev.numel()), 1)
        better = dl < best - 1e-4 * best.abs().clamp_max(1e6)
        best = torch.where(better, dl, best)
        bad = torch.where(better, torch.zeros_like(bad), bad + 1)
        cols = better[:, None, :, None].expand(num_l, h, k, c).reshape(num_l, h, k * c)
        best_w = torch.where(cols, w, best_w)
        best_b = torch.where(cols[:, 0], b, best_b)
        if bool((bad >= patience).all()):
            break
    return best_w, best_b, mean, scale


def _logistic_group(task: ProbeTask, xs: torch.Tensor, y_np: np.ndarray, fold_np: np.ndarray,
                    group_np: np.ndarray, c: int, opts: LogisticOptions, reduce=None,
                    units: tuple | None = None):
    """Cross-validated logistic probes of layers ``xs`` ``(L, n, H)`` sharing their
    examples (targets ``y_np`` ``(heads, n)``); with ``reduce`` (sharded,
    ``dev_fraction=0``) the returned confusions and counts are those of all shards.
    ``units``: ``(unit of each example, number of units)`` for the bootstrap: also
    returns ``(L, units, heads, 2)`` right and tested examples per unit (else None)."""
    folds, k = task.folds, y_np.shape[0]
    per_unit = None if units is None else torch.zeros(xs.shape[0], units[1], k, 2,
                                                      dtype=torch.float64)
    y = torch.from_numpy(y_np).to(xs.device)

    def rows(m):
        return torch.from_numpy(np.flatnonzero(m)).to(xs.device)

    conf = np.zeros((xs.shape[0], k, folds, c, c), dtype=np.int64)
    # each fold's training part: class counts (folds, heads * C) and examples
    counts = np.concatenate([fold_class_counts(yh, fold_np, folds, c)[1] for yh in y_np],
                            1).astype(np.float64)
    n_fold = (len(fold_np) - np.bincount(fold_np, minlength=folds)).astype(np.float64)
    for f in range(folds):
        test_m = fold_np == f
        if opts.dev_fraction == 0:  # no early stopping: the penalised optimum
            w, b, mean, scale = _fit_logistic_full(
                xs, y, rows(~test_m), c, weight_decay=opts.weight_decay,
                max_iter=25 * opts.max_epochs, reduce=reduce)
        else:
            train_groups = np.unique(group_np[~test_m])
            rng = np.random.default_rng([task.seed, 1000 + f])
            n_dev = min(max(1, round(opts.dev_fraction * len(train_groups))),
                        len(train_groups) - 1)
            dev_groups = rng.choice(train_groups, size=n_dev, replace=False)
            dev_m = np.isin(group_np, dev_groups) & ~test_m
            w, b, mean, scale = _fit_logistic(
                xs, y, rows(~test_m & ~dev_m), rows(dev_m), c, seed=task.seed * 7919 + f, lr=opts.lr,
                batch_size=opts.batch_frames, max_epochs=opts.max_epochs,
                patience=opts.patience, weight_decay=opts.weight_decay)
        te = rows(test_m)
        with torch.no_grad():
            for i in range(0, int(te.numel()), 8192):
                idx = te[i:i + 8192]
                pred = _logits(xs, idx, w, b, mean, scale).view(xs.shape[0], -1, k, c).argmax(-1)
                for hh in range(k):
                    t = y[hh, idx]
                    for li in range(xs.shape[0]):
                        conf[li, hh, f] += confusion_matrix(t, pred[li, :, hh], c)
                if per_unit is not None:
                    u = torch.from_numpy(units[0][idx.cpu().numpy()])
                    right = (pred == y[:, idx].T[None]).double().cpu()  # (L, n, heads)
                    per_unit[..., 0].index_add_(1, u, right)
                    per_unit[..., 1].index_add_(1, u, torch.ones_like(right))
    if reduce is not None:
        conf = reduce(torch.from_numpy(conf)).numpy()
        counts = reduce(torch.from_numpy(counts)).numpy()
        n_fold = reduce(torch.from_numpy(n_fold)).numpy()
        per_unit = None if per_unit is None else reduce(per_unit)
    return conf, counts, n_fold, (None if per_unit is None else per_unit.numpy())


def _logistic_layers(task: ProbeTask, store, positions: np.ndarray, layer_list: list[int],
                     c: int, device, opts: LogisticOptions, reduce=None,
                     units: tuple | None = None) -> dict:
    """Per layer ``(conf, counts, n_train, None, degenerate, per-unit sums or None)``:
    layers of one hidden size and frame labels trained batched; ``store`` holds the
    utterances at corpus ``positions`` (all, or one shard: ``reduce`` sums over shards);
    ``units``: ``(unit of each selected utterance, number of units)`` for the bootstrap."""
    mine = task.where[np.asarray(positions, dtype=np.int64)]
    local = np.flatnonzero(mine >= 0).tolist()  # the store's utterances of the task
    tpos = mine[local]
    arg = None if len(local) == len(store) else local
    groups: dict[tuple, list[int]] = {}
    for layer in layer_list:
        key = (store.hidden_sizes[layer],
               task.frame_key(layer) if task.level == "frame" else None)
        groups.setdefault(key, []).append(layer)
    out, reasons = {}, {}
    for (h, _), members in groups.items():
        if task.level == "frame":  # this store's frames, in its order
            d = task.frame_targets(members[0])
            offs = np.concatenate([[0], np.cumsum(d.lengths)])
            rows = np.concatenate([np.arange(offs[t], offs[t + 1]) for t in tpos]
                                  + [np.zeros(0, dtype=np.int64)])
            keep = d.y[rows] >= 0
            rows = rows[keep]
            y_np = task.heads(rows, d)
            fold_np, group_np = d.fold[rows], task.groups[d.utt[rows]]
            utt_np = d.utt[rows]
        else:
            rows = tpos
            y_np = task.heads(rows)
            fold_np, group_np = task.utt_fold[rows], task.groups[rows]
            utt_np = rows
        n = n_group = len(rows)
        y_np = np.ascontiguousarray(y_np.T.astype(np.int64))
        if reduce is not None:  # every shard must group the layers alike (same collectives)
            n_group = int(reduce(torch.tensor([float(n)], dtype=torch.float64))[0])
        per = max(1, int(opts.max_memory // max(1, n_group * h * 4)))
        for start in range(0, len(members), per):
            batch = members[start:start + per]
            feats = []
            for layer in batch:
                x = _read(store, layer, arg, local, task.level, h)
                if task.level == "frame":
                    x = x[torch.from_numpy(keep)]
                # the layer's guard, common to all shards: frames, or pooled vectors (their
                # spread compared with the frames'); centred (the probe standardises
                # anyway), refused beyond the range float32 differences from the mean resolve
                guard = layer_guard(store, layer, arg, level=task.level, reduce=reduce,
                                    centre=True, span=float32_distances_span(),
                                    per_feature=True)
                reasons[layer] = guard.reason
                xg = guard(x, torch.float32, device)
                if guard.reason:  # refused (NaN scores): train on zeros, not on noise
                    xg.zero_()
                feats.append(xg)
            xs = torch.stack(feats)
            del feats
            conf, counts, n_fold, per_unit = _logistic_group(
                task, xs, y_np, fold_np, group_np, c, opts, reduce=reduce,
                units=None if units is None else (units[0][utt_np], units[1]))
            del xs
            for li, layer in enumerate(batch):
                out[layer] = (conf[li], counts, n_fold, None, reasons[layer],
                              None if per_unit is None else per_unit[li])
    return out


def _read(store, layer: int, arg, local: list, level: str, h: int) -> torch.Tensor:
    """The frames (or pooled vectors) of ``store``'s utterances ``local``."""
    dt = read_dtype(store)
    if not local:
        return torch.zeros(0, h, dtype=dt)
    if level == "frame":
        return torch.as_tensor(store.layer(layer, utterances=arg, dtype=dt)[0])
    x = torch.as_tensor(store.pooled(layer, utterances=arg, dtype=dt))
    empty = torch.isnan(x).any(1)
    if bool(empty.any()):
        bad = [store.ids[local[i]] for i in torch.nonzero(empty).squeeze(1).tolist()]
        raise ValueError(
            f"{len(bad)} utterance(s) have no frames in stored layer {layer} (e.g. {bad[:5]}), "
            "so no pooled vector; leave them out with `utterances=`")
    return x
