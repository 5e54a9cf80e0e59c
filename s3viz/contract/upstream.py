"""``check_upstream``: an ``AbsUpstream`` (waveforms -> every hidden state) on noise.

:data:`UPSTREAM_CHECKS` lists its checks as small named functions in the order they
run, over one shared :class:`_UpstreamRun` (``docs/contract.md``).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import torch

from .checks import (_check_finite, _check_lengths_bound, _check_lengths_type, _check_rate,
                     _check_shape, _determinism_row, _positive_int_property, _read, _unreadable)
from .report import ContractReport, _Rows
from .session import (_DEFAULT_WAV_LENGTHS, _UPSTREAM_SIGNATURE, _abs_diff, _graded_row,
                      _int_status, _max_abs, _max_diff, _noise, _over_valid, _run_checks,
                      _Session, _UpOut)

__all__ = ["check_upstream"]

_UPSTREAM_LAYER_CHECKS = ("hidden_shape", "lengths_type", "lengths_bound", "lengths_rate",
                          "finite", "determinism", "batch_invariance")


def check_upstream(upstream, *, device=None, wav_lengths: Sequence[int] | None = None,
                   tolerance: int = 2, atol: float | None = None, rtol: float | None = None,
                   seed: int = 0, move: bool = False) -> ContractReport:
    """Check that ``upstream`` follows s3prl's ``AbsUpstream`` contract; a
    :class:`ContractReport` titled ``check_upstream(<class name>)``.

    Runs ``upstream(wavs, wavs_len)`` on seeded noise waveforms: the batch, again, each
    waveform alone and the shortest one as ``(batch_size, seq_len)``. The checks, one
    row each (and per layer for the hidden states): ``docs/contract.md``.

    Args:
        upstream: an ``nn.Module`` or any object with ``forward`` and the interface's
            properties.
        device: where inputs go; ``None``: where the upstream's parameters are.
        wav_lengths: waveform lengths in samples (default ``(11850, 16000, 4003)``).
        tolerance: frames of deviation from ``ceil(L/rate)`` still a ``warn``.
        atol, rtol: value tolerances (None: by dtype).
        seed: seed of the generated waveforms and of the (forked) global RNG.
        move: move the upstream to ``device`` for the check, and back afterwards.

    Raises TypeError / ValueError for bad arguments, never for a broken upstream.
    """
    def body(rows, lengths, s):
        run = _UpstreamRun(upstream, s, lengths, tolerance, seed)
        for check in UPSTREAM_CHECKS:
            if check(run, rows) is False:
                return

    return _run_checks("check_upstream",
                       [("upstream", upstream, "AbsUpstream", _UPSTREAM_SIGNATURE)],
                       wav_lengths, "wav_lengths", _DEFAULT_WAV_LENGTHS, body, seed=seed,
                       device=device, move=move, atol=atol, rtol=rtol, tolerance=tolerance)


class _UpstreamRun:
    """What the upstream checks share: the inputs, the calls made so far and what they showed."""

    def __init__(self, upstream, s: _Session, lengths, tolerance: int, seed: int):
        self.upstream, self.s, self.lengths = upstream, s, list(lengths)
        self.tolerance, self.seed, self.batch = tolerance, seed, len(lengths)
        self.num_layer = self.sizes = self.rates = self.conv_layers = None
        self.wavs3 = self.wavs_len = self.wavs_len_cpu = None
        self.out3 = self.out2 = self.main = self.form = self.rep = None
        self.short, self.singles, self.scales = 0, [], []
        self.nondeterministic: set = set()
        self.wavs_2d_at = 0  # where the wavs_2d row goes, once determinism is known

    @property
    def both_forms_work(self) -> bool:
        return self.out3.error is None and self.out2.error is None


def _per_layer(fn):
    """A check ``fn(run, rows, layer)`` run for each hidden state of the main call, guarded
    as the row its name says (``_finite``: ``finite``)."""
    @functools.wraps(fn)
    def each(run: _UpstreamRun, rows: _Rows) -> None:
        for layer in range(run.main.count):
            with rows.guard(fn.__name__[1:], layer):
                fn(run, rows, layer)
    return each


def _setup(run: _UpstreamRun, rows: _Rows) -> None:
    run.s.setup_rows(rows, f"batch of {run.batch} noise waveforms, lengths", run.lengths,
                     run.seed)


def _int_list_property(up, name: str, meaning: str, rows: _Rows):
    """One positive int per hidden state (None entries where bad; None when not a list)."""
    value, err = _read(up, name)
    if err is not None:
        rows.add(name, "fail", f"upstream.{name} {_unreadable(err)}; add a property returning a "
                 f"list of {meaning}, one positive int per hidden state")
        return None
    if not isinstance(value, (list, tuple)):
        rows.add(name, "fail", f"upstream.{name} is {type(value).__name__}; it must be a list of "
                 f"{meaning}, one positive int per hidden state (e.g. return [int(v) for v in "
                 "...])")
        return None
    if not value:
        rows.add(name, "fail", f"upstream.{name} is empty; it needs one entry per hidden state")
        return []
    graded = [_int_status(v) for v in value]
    out = [int(v) if status != "fail" else None for v, (status, _) in zip(value, graded)]
    worst = max((status for status, _ in graded), key=("ok", "warn", "fail").index)
    if worst == "ok":
        rows.add(name, "ok", f"upstream.{name} = {out}")
    else:
        notes = "; ".join(f"[{i}] {why}" for i, (st, why) in enumerate(graded) if st != "ok")
        fix = f"; each must be a positive int ({meaning})" if worst == "fail" else ""
        rows.add(name, worst, f"upstream.{name} = {list(value)!r}: {notes}{fix}")
    return out


def _count_property(up, rows: _Rows) -> int | None:
    """Reads num_layer, or s3prl's num_layers spelling (a warn row)."""
    (v1, e1), (v2, e2) = _read(up, "num_layer"), _read(up, "num_layers")
    if e1 is None:
        if e2 is None and v2 != v1 and _int_status(v1)[0] != "fail":
            rows.add("num_layer", "fail", f"upstream.num_layer = {v1!r} but upstream.num_layers "
                     f"= {v2!r}; the alias must return the same number")
            return int(v1)
        return _positive_int_property(up, "upstream", "num_layer", "the number of hidden states "
                                      "forward() returns", rows, read=(v1, e1))
    if e2 is None:
        status, why = _int_status(v2)
        if status == "fail":
            rows.add("num_layer", "fail", f"upstream has no num_layer and upstream.num_layers "
                     f"{why}; it must be a positive int")
            return None
        rows.add("num_layer", "warn", f"upstream has num_layers = {int(v2)} (s3prl "
                 "S3PRLUpstream's spelling) but no num_layer (the s3prl AbsUpstream interface); "
                 "accepted, but add a num_layer property" + (f"; {why}" if why else ""))
        return int(v2)
    rows.add("num_layer", "fail", f"upstream.num_layer {_unreadable(e1)} and there is no "
             "num_layers either; add a num_layer property giving the number of hidden states")
    return None


def _declared_sizes(run: _UpstreamRun, rows: _Rows) -> None:
    """``num_layer``, ``hidden_sizes``, ``downsample_rates`` (and ``conv_layers``, read only)."""
    up = run.upstream
    run.num_layer = _count_property(up, rows)
    run.sizes = _int_list_property(up, "hidden_sizes", "hidden sizes", rows)
    run.rates = _int_list_property(up, "downsample_rates",
                                   "downsample rates (samples of 16 kHz audio per frame)", rows)
    run.conv_layers, _ = _read(up, "conv_layers")


def _forward(run: _UpstreamRun, rows: _Rows) -> bool:
    """``forward`` on ``(batch_size, seq_len, 1)``, and ``wavs_2d`` when it is already known;
    False when no form of the input runs (the later checks are skipped)."""
    s, up, lengths, batch = run.s, run.upstream, run.lengths, run.batch
    wavs3, run.wavs_len_cpu = _noise(lengths, run.seed, None, 0.1)
    run.wavs3 = wavs3 = wavs3.to(s.device, s.dtype)
    run.wavs_len = wavs_len = run.wavs_len_cpu.to(s.device)
    run.out3 = out3 = _UpOut(up, wavs3, wavs_len)
    # 2-D wavs: the whole batch only when 3-D failed (then it is the main call); else the
    # shortest utterance alone, compared with its 3-D single call below (one cheap extra call)
    run.short = short = min(range(batch), key=lambda i: lengths[i])
    if out3.error is None:
        run.out2 = out2 = _UpOut(up, wavs3[short: short + 1, : lengths[short], 0],
                                 wavs_len[short: short + 1])
    else:
        run.out2 = out2 = _UpOut(up, wavs3[..., 0], wavs_len)

    call = f"forward(wavs {tuple(wavs3.shape)}, wavs_len ({batch},))"
    if out3.error is None:
        rows.add("forward", "ok", f"{call} returned {out3.count} hidden states")
        run.main, run.form = out3, (lambda w: w)
        run.wavs_2d_at = len(rows.rows)  # with both forms working, _wavs_2d writes it here
        if out2.error is not None:
            rows.add("wavs_2d", "warn", f"does not accept wavs (batch_size, seq_len): "
                     f"{out2.error}. Fine for the interface (s3viz always passes (batch_size, "
                     "seq_len, 1)); accepting both is friendlier")
    elif out2.error is None:
        rows.add("forward", "fail", f"forward(wavs {tuple(wavs3.shape)} = (batch_size, seq_len, "
                 f"1)) failed: {out3.error}. It works with (batch_size, seq_len), but the "
                 "interface passes (batch_size, seq_len, 1): add `if wavs.dim() == 3: wavs = "
                 "wavs.squeeze(-1)`. The checks below used (batch_size, seq_len).")
        run.main, run.form = out2, (lambda w: w[..., 0])
        rows.add("wavs_2d", "ok", "accepts wavs (batch_size, seq_len)")
    else:
        rows.add("forward", "fail", f"{call} failed: {out3.error}")
        rows.add("wavs_2d", "warn", f"also fails with (batch_size, seq_len): {out2.error}")
        rows.skip(("layer_count", "stable_layers") + _UPSTREAM_LAYER_CHECKS, "forward failed")
        return False
    return True


def _layer_count(run: _UpstreamRun, rows: _Rows) -> None:
    """``layer_count``: the declared sizes and the returned lists have one entry per hidden state."""
    main = run.main
    counts = {"num_layer": run.num_layer,
              "len(hidden_sizes)": None if run.sizes is None else len(run.sizes),
              "len(downsample_rates)": None if run.rates is None else len(run.rates),
              "len(all_hs)": main.count, "len(all_hs_len)": len(main.all_hs_len)}
    known = {k: v for k, v in counts.items() if v is not None}
    unknown = [k for k, v in counts.items() if v is None]
    text = ", ".join(f"{k} = {v}" for k, v in known.items())
    if unknown:
        text += f" ({', '.join(unknown)} unusable, see above)"
    agree = len(set(known.values())) == 1
    rows.add("layer_count", "ok" if agree else "fail", text if agree else text + ": these must all "
             "be equal (one entry per hidden state)", value=main.count)


def _stable_layers(run: _UpstreamRun, rows: _Rows) -> None:
    """``stable_layers``, after the repeat call and each utterance alone (used by later checks)."""
    up, main, form, wavs3, wavs_len = run.upstream, run.main, run.form, run.wavs3, run.wavs_len
    run.rep = _UpOut(up, form(wavs3), wavs_len)
    run.singles = [_UpOut(up, form(wavs3[i: i + 1, :n]), wavs_len[i: i + 1])
                   for i, n in enumerate(run.lengths)]
    calls = [("batch", main), ("repeat", run.rep)] + [
        (f"utterance {i} alone", o) for i, o in enumerate(run.singles)]
    if run.both_forms_work:
        calls.append((f"utterance {run.short} alone as (batch_size, seq_len)", run.out2))
    seen = [(name, o.count) for name, o in calls if o.error is None]
    counts = [c for _, c in seen]
    if len(set(counts)) <= 1:
        rows.add("stable_layers", "ok", f"{main.count} hidden states in each of {len(seen)} calls",
                 value=main.count)
    else:
        rows.add("stable_layers", "fail", "number of hidden states changes across calls in eval "
                 "mode: " + ", ".join(f"{name}: {c}" for name, c in seen) + " (layerdrop or a "
                 "data-dependent exit must be off in eval; weighted sums need a fixed count)",
                 value=max(counts) - min(counts))


@_per_layer
def _hidden_shape(run: _UpstreamRun, rows: _Rows, layer: int) -> None:
    """``hidden_shape``; also measures the layer's scale for the tolerances."""
    h, sizes = run.main.all_hs[layer], run.sizes
    run.scales.append(_over_valid(_max_abs, run.main.valid(layer, run.batch), h))
    size = sizes[layer] if sizes is not None and layer < len(sizes) else None
    _check_shape(rows, "hidden_shape", h, run.batch, size, f"hidden_sizes[{layer}]", layer)


@_per_layer
def _lengths_type(run: _UpstreamRun, rows: _Rows, layer: int) -> None:
    all_hs_len = run.main.all_hs_len
    if layer >= len(all_hs_len):
        rows.add("lengths_type", "fail", f"no all_hs_len[{layer}] (all_hs_len has "
                 f"{len(all_hs_len)} entries)", layer)
    else:
        _check_lengths_type(rows, all_hs_len[layer], run.batch, f"all_hs_len[{layer}]", layer)


@_per_layer
def _lengths_bound(run: _UpstreamRun, rows: _Rows, layer: int) -> None:
    _check_lengths_bound(rows, run.main.lengths(layer, run.batch), run.main.all_hs[layer],
                         f"all_hs_len[{layer}]", layer)


@_per_layer
def _lengths_rate(run: _UpstreamRun, rows: _Rows, layer: int) -> None:
    """``lengths_rate``: frames against ``ceil(L / rate)`` (or the declared conv stack)."""
    n, rates = run.main.lengths(layer, run.batch), run.rates
    rate = rates[layer] if rates is not None and layer < len(rates) else None
    if rate is None:
        rows.add("lengths_rate", "warn", f"not assessed: downsample_rates[{layer}] unusable", layer)
    elif n is None:
        rows.add("lengths_rate", "warn", f"not assessed: all_hs_len[{layer}] unreadable", layer)
    else:
        _check_rate(rows, "lengths_rate", n, run.wavs_len_cpu, rate, run.tolerance,
                    f"all_hs_len[{layer}]", layer, conv_layers=run.conv_layers)


@_per_layer
def _finite(run: _UpstreamRun, rows: _Rows, layer: int) -> None:
    _check_finite(rows, run.main.all_hs[layer], run.main.valid(layer, run.batch), layer)


@_per_layer
def _determinism(run: _UpstreamRun, rows: _Rows, layer: int) -> None:
    """``determinism``: the repeat call's valid frames; marks the layers that vary."""
    main, rep, batch = run.main, run.rep, run.batch
    if rep.error is not None:
        rows.add("determinism", "fail", f"the second call raised {rep.error}", layer)
        run.nondeterministic.add(layer)
        return
    if rep.count != main.count:
        rows.add("determinism", "warn", f"not assessed: the second call returned "
                 f"{rep.count} hidden states (see stable_layers)", layer)
        return
    n1, n2 = main.valid(layer, batch), rep.valid(layer, batch)
    if n1 is None or n2 is None:
        rows.add("determinism", "warn", "not assessed: lengths unreadable", layer)
    elif not torch.equal(n1, n2):
        rows.add("determinism", "fail", f"lengths differ between two calls: {n1.tolist()} vs "
                 f"{n2.tolist()}", layer)
        run.nondeterministic.add(layer)
    elif not _determinism_row(
            rows, _over_valid(_max_diff, n1, main.all_hs[layer], rep.all_hs[layer]),
            run.s.tol(run.scales[layer]), layer):
        run.nondeterministic.add(layer)


def _wavs_2d(run: _UpstreamRun, rows: _Rows) -> None:
    """``wavs_2d`` when both input forms run: the short utterance alone as ``(1, seq_len)``
    against ``(1, seq_len, 1)``; written after determinism, reported beside ``forward``."""
    if not run.both_forms_work:
        return
    out3, out2 = run.singles[run.short], run.out2
    what = f"utterance {run.short} alone as (1, seq_len) vs (1, seq_len, 1)"
    before = len(rows.rows)
    with rows.guard("wavs_2d"):
        if out3.error is not None:
            rows.add("wavs_2d", "ok", f"accepts wavs (batch_size, seq_len); not compared "
                     f"({what}: the 3-D call raised {out3.error})")
        elif out2.count != out3.count:
            rows.add("wavs_2d", "warn", f"accepts (batch_size, seq_len) but {what} returned "
                     f"{out2.count} hidden states instead of {out3.count} (see stable_layers)")
        else:
            diff = max(_over_valid(_max_diff, out3.valid(layer, 1), a, b)
                       for layer, (a, b) in enumerate(zip(out3.all_hs, out2.all_hs)))
            tol = run.s.tol(max(_max_abs(h) for h in out3.all_hs))
            if diff <= tol:
                rows.add("wavs_2d", "ok", "also accepts wavs (batch_size, seq_len), same hidden "
                         f"states ({what}: max abs diff {diff:.3g})", value=diff)
            elif run.nondeterministic:
                rows.add("wavs_2d", "ok", "also accepts wavs (batch_size, seq_len); hidden states "
                         "not compared (not deterministic, see determinism)", value=diff)
            else:
                rows.add("wavs_2d", "warn", "accepts (batch_size, seq_len) but returns different "
                         f"hidden states: {what}: max abs diff {diff:.3g} (tolerance {tol:.3g})",
                         value=diff)
    rows.rows.insert(run.wavs_2d_at, rows.rows.pop(before))


def _frames_over(a: torch.Tensor, b: torch.Tensor, tol: float) -> list:
    """Indices of the frames (rows) of ``a`` and ``b`` that differ by more than ``tol``."""
    a = a.detach().double().cpu()
    d = _abs_diff(a, b.detach().double().cpu()).reshape(a.shape[0], -1).amax(dim=1)
    return torch.nonzero(~(d <= tol)).squeeze(1).tolist()


def _batch_variance_cause(where) -> str:
    """Which frames padding changed, and the likely cause, from ``(utt, k, bad frames)``."""
    if not where:
        return "padding changes the valid frames"
    tails = [(i, k, bad) for i, k, bad in where
             if bad and bad == list(range(k - len(bad), k)) and len(bad) < k]
    most = [(i, k, bad) for i, k, bad in where if len(bad) >= 0.5 * k]
    shown = ", ".join(f"utterance {i}: {len(bad)} of {k}" for i, k, bad in where[:3])
    # length arithmetic (ceil vs the convolutions' floor) accounts for 1 or 2 frames
    if len(tails) == len(where) and max(len(b) for _, _, b in tails) <= 3:
        n = max(len(b) for _, _, b in tails)
        return (f"padding changes the valid frames: only the last {n} frame(s) of shorter "
                f"utterances differ ({shown}): the "
                "reported lengths count frames whose window reaches into the padding (e.g. "
                "(L - 1) // 320 + 1 where the convolutions give (L - 400) // 320 + 1); report "
                "the frames the convolutions make from the valid samples")
    if len(most) == len(where):
        every = all(len(bad) == k for _, k, bad in where)
        return (f"padding changes the valid frames: "
                f"{'every frame' if every else 'most frames'} of the padded utterances "
                f"{'changes' if every else 'change'} ({shown} frames differ): the "
                "padding enters a computation over the whole sequence: a normalisation over "
                "time (group norm in the first convolution of wav2vec2-base-like models), "
                "attention without a padding mask, or an old-style padding mask that the model "
                "was not trained with; mask padded samples/frames or run each utterance unpadded")
    return (f"padding changes the valid frames: some of them ({shown} frames differ): padding "
            "reaches valid frames through a convolution or attention over padded frames; zero "
            "padded frames before each such layer or run each utterance unpadded")


@_per_layer
def _batch_invariance(run: _UpstreamRun, rows: _Rows, layer: int) -> None:
    check, main, batch = "batch_invariance", run.main, run.batch
    if layer in run.nondeterministic:
        rows.add(check, "warn", "not assessed: this layer is not deterministic (see determinism)",
                 layer)
        return
    nb = main.valid(layer, batch)
    if nb is None:
        rows.add(check, "warn", "not assessed: batched lengths or shape unreadable", layer)
        return
    worst, length_issues, notes = 0.0, [], []
    tol = run.s.tol(run.scales[layer])
    where = []  # (utterance, valid frames, indices of frames that differ past tol)
    for i, single in enumerate(run.singles):
        if single.error is not None:
            rows.add(check, "fail", f"utterance {i} alone (batch_size 1, no padding) raised "
                     f"{single.error}", layer)
            return
        if single.count != main.count:
            notes.append(f"utterance {i} alone gave {single.count} hidden states (see "
                         "stable_layers)")
            continue
        raw_b, raw_a, na = main.lengths(layer, batch), single.lengths(layer, 1), single.valid(
            layer, 1)
        if raw_a is None or na is None:
            notes.append(f"utterance {i} alone: lengths unreadable")
            continue
        if int(raw_a[0]) != int(raw_b[i]):
            length_issues.append(f"utterance {i}: {int(raw_a[0])} frames alone vs "
                                 f"{int(raw_b[i])} in the batch")
        k = min(int(na[0]), int(nb[i]))
        alone, batched = single.all_hs[layer][0, :k], main.all_hs[layer][i, :k]
        d = _max_diff(alone, batched)
        worst = max(worst, d)
        if d > tol and math.isfinite(d):
            where.append((i, k, _frames_over(alone, batched, tol)))
    if length_issues:
        rows.add(check, "fail", "lengths depend on the batch: " + "; ".join(length_issues),
                 layer, worst)
    elif notes and worst == 0.0:
        rows.add(check, "warn", "not assessed: " + "; ".join(notes), layer)
    else:
        _graded_row(rows, check, worst, tol, f"each utterance alone vs padded in the batch: max "
                    f"abs diff {worst:.3g} over valid frames (tolerance {tol:.3g})", layer,
                    fail="; " + _batch_variance_cause(where),
                    after="; " + "; ".join(notes) if notes else "")


UPSTREAM_CHECKS = (_setup, _declared_sizes, _forward, _layer_count, _stable_layers, _hidden_shape,
                   _lengths_type, _lengths_bound, _lengths_rate, _finite, _determinism, _wavs_2d,
                   _batch_invariance)
"""The checks of :func:`check_upstream`, in the order they run (each reads what the
earlier ones measured; ``_forward`` returns False when nothing runs: the rest is skipped)."""
