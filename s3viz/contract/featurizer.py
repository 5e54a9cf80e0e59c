"""``check_featurizer``: an ``AbsFeaturizer`` (hidden states -> one hidden state), run on
an upstream's hidden states (``docs/contract.md``).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import torch

from .checks import (_check_finite, _check_rate, _forward_output, _positive_int_property, _read,
                     _run_pair)
from .report import ContractReport
from .session import (_DEFAULT_WAV_LENGTHS, _UPSTREAM_SIGNATURE, _max_abs, _max_diff, _name,
                      _noise, _run_checks, _UpOut)

__all__ = ["check_featurizer"]

_FEATURIZER_OUTPUT_CHECKS = ("output_shape", "lengths_type", "lengths_bound", "lengths_rate",
                             "finite", "different_lengths")


def check_featurizer(featurizer, upstream, *, device=None,
                     wav_lengths: Sequence[int] | None = None, tolerance: int = 2,
                     atol: float | None = None, rtol: float | None = None, seed: int = 0,
                     move: bool = False) -> ContractReport:
    """Check that ``featurizer`` follows s3prl's ``AbsFeaturizer`` contract on ``upstream``'s
    output; a :class:`ContractReport` titled ``check_featurizer(<class name>)``.

    The upstream runs once on seeded noise waveforms; the featurizer then gets
    ``(all_hs, all_hs_len)``, and again with each layer in turn one frame short
    (``docs/contract.md``). The other arguments are :func:`check_upstream`'s; with
    ``device=None`` each object runs where its parameters are and the hidden states move
    to the featurizer's device.
    """
    objs = [("featurizer", featurizer, "AbsFeaturizer", "forward(all_hs, all_hs_len) -> "
             "(hs (batch_size, seq_len, output_size), hs_len (batch_size,))"),
            ("upstream", upstream, "AbsUpstream", _UPSTREAM_SIGNATURE)]
    return _run_checks("check_featurizer", objs, wav_lengths, "wav_lengths",
                       _DEFAULT_WAV_LENGTHS, functools.partial(_featurizer_checks, featurizer,
                                                               upstream, tolerance, seed),
                       seed=seed, device=device, move=move, atol=atol, rtol=rtol,
                       tolerance=tolerance)


def _featurizer_checks(featurizer, upstream, tolerance, seed, rows, lengths, s, us):
    batch = len(lengths)
    s.setup_rows(rows, f"upstream {_name(upstream)} on {batch} noise waveforms, lengths",
                 lengths, seed)
    out_size = _positive_int_property(featurizer, "featurizer", "output_size",
                                      "the hidden size of hs", rows)
    rate = _positive_int_property(featurizer, "featurizer", "downsample_rate",
                                  "samples of 16 kHz audio per frame of hs", rows)

    wavs, wavs_len_cpu = _noise(lengths, seed, None, 0.1)
    wavs = wavs.to(us.device, us.dtype)
    up = _UpOut(upstream, wavs, wavs_len_cpu.to(us.device))
    if up.error is not None:
        up2 = _UpOut(upstream, wavs[..., 0], wavs_len_cpu.to(us.device))
        up = up2 if up2.error is None else up
    lens = [up.lengths(i, batch) for i in range(up.count)]
    if up.error is not None or any(n is None for n in lens) or len(up.all_hs_len) != up.count:
        why = up.error or ("its all_hs_len cannot be read as one (batch_size,) integer tensor "
                           "per layer")
        rows.add("upstream", "fail", f"upstream {_name(upstream)} did not give usable hidden "
                 f"states: {why}; run s3viz.check_upstream(upstream) first")
        rows.skip(("forward",) + _FEATURIZER_OUTPUT_CHECKS, "no hidden states from the upstream")
        return
    rows.add("upstream", "ok", f"upstream gave {up.count} hidden states, seq_len "
             f"{[h.shape[1] if h.dim() > 1 else None for h in up.all_hs]}")
    all_hs = [h.to(s.device) for h in up.all_hs]
    all_hs_len = [n.to(s.device) for n in lens]

    res = _forward_output(rows, featurizer, all_hs, all_hs_len, "hs", "forward(all_hs, all_hs_len)",
                          _FEATURIZER_OUTPUT_CHECKS, batch, out_size,
                          f"forward(all_hs ({up.count} layers), all_hs_len)")
    if res is None:
        return
    hs, n = res
    with rows.guard("lengths_rate"):
        if rate is None or n is None:
            rows.add("lengths_rate", "warn", "not assessed: downsample_rate or hs_len unusable")
        else:
            up_rates, _ = _read(upstream, "downsample_rates")
            match = []
            if isinstance(up_rates, (list, tuple)) and len(up_rates) == up.count:
                match = [i for i, r in enumerate(up_rates) if r == rate]
            reference = None
            if match:
                worst = max(match, key=lambda i: int((n - lens[i]).abs().max()))
                reference = (lens[worst], f"upstream all_hs_len[{worst}] (layers {match} have "
                             f"rate {rate})")
            _check_rate(rows, "lengths_rate", n, wavs_len_cpu, rate, tolerance, "hs_len",
                        reference=reference)
    with rows.guard("finite"):
        _check_finite(rows, hs,
                      None if n is None else n.clamp(0, hs.shape[1] if hs.dim() > 1 else 0))
    with rows.guard("different_lengths"):
        _check_different_lengths(rows, s, featurizer, all_hs, all_hs_len, hs)


def _check_different_lengths(rows, s, featurizer, all_hs, all_hs_len, hs):
    check = "different_lengths"
    if len(all_hs) < 2:
        rows.add(check, "warn", "not assessed: the upstream has a single hidden state")
        return
    # Only a layer with a sibling of the same frame counts is cut: a layer alone at its rate,
    # one frame shorter, can still be a consistent input (some waveform length gives it).
    lens = [n.cpu() for n in all_hs_len]
    usable = [i for i, h in enumerate(all_hs) if h.dim() == 3 and h.shape[1] >= 2
              and any(j != i and torch.equal(lens[j], lens[i]) for j in range(len(all_hs)))]
    if not usable:
        rows.add(check, "warn", "not assessed: no two hidden states share their frame counts")
        return
    raised, unused, silent = [], [], []
    first_error = None
    for i in usable:
        short, short_len = list(all_hs), list(all_hs_len)
        short[i] = all_hs[i][:, :-1]
        short_len[i] = all_hs_len[i].clamp(max=short[i].shape[1])
        res = _run_pair(featurizer, short, short_len, "hs")
        if isinstance(res, str):
            raised.append(i)
            first_error = first_error or res
        elif res[0].shape == hs.shape and _max_diff(res[0], hs) <= s.tol(_max_abs(hs)):
            unused.append(i)
        else:
            silent.append(i)
    if silent:
        rows.add(check, "fail", f"silently accepted all_hs with layer(s) {silent} one frame "
                 "shorter than the upstream returned (no error, output changed): check that the "
                 "layers' seq_len and all_hs_len agree and raise (s3prl's Featurizer dropped this "
                 "assert)", value=len(silent))
    elif raised:
        text = f"raised when layer(s) {raised} were one frame shorter ({first_error})"
        if unused:
            text += f"; layers {unused} do not affect the output (unused)"
        rows.add(check, "ok", text, value=0)
    else:
        rows.add(check, "warn", "not assessed: no layer affects the output or none has 2+ frames "
                 f"(unused: {unused})")
