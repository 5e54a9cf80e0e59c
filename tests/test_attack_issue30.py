"""Attacks on the attention statistics and ABX on any label (issue 30): each test shows a
place where the new features are quietly wrong or leave bad state, and states the right
behaviour. Small and fast: a 1-layer tiny model, the fixed ABX case of _abx_case."""

from __future__ import annotations

import threading

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

import _abx_case
from s3viz.abx import abx_layers
from s3viz.attention import attention_maps, attention_stats
from s3viz.data import Corpus, Utterance
from s3viz.store import LayerStore
from s3viz.zoo import TinyConfig, TinyUpstream

pytestmark = pytest.mark.usefixtures("one_thread")


def _tiny(seed=0):
    torch.manual_seed(seed)
    return TinyUpstream(TinyConfig(conv_channels=16, hidden_size=32, num_layers=1, num_heads=2,
                                   ffn_size=32, pos_conv_kernel=5, pos_conv_groups=2)).eval()


def _utt(phones, n=16000, uid="u", seed=0):
    rng = np.random.default_rng(seed)
    return Utterance(uid, (rng.standard_normal(n) * 0.1).astype(np.float32), phones=phones)


def test_head_summary_agrees_with_attention_stats_on_adjacent_same_label_segments():
    """The explorer widget's numbers (``widgets._attention.head_summary``) claim to average
    "as attention_stats averages them", but they find segments as runs of equal labels:
    two adjacent phones "a" "a" become one phone, and two words "w" "w" with distinct
    ``word_index`` one word. attention_stats (segments by identity, word_index) gives
    same_phone 0.25 / same_word 0.5 on this utterance; the widget shows 0.5 / 1.0.
    Right: head_summary's same_phone and same_word equal attention_stats' for a
    one-utterance corpus (segments by row identity and word_index, as docs/attention.md)."""
    from s3viz.widgets._attention import head_summary

    ph = pd.DataFrame({"phone": ["a", "a", "b", "b"], "word": ["w", "w", "w", "w"],
                       "word_index": [0, 0, 1, 1], "start": [0, 4000, 8000, 12000],
                       "end": [4000, 8000, 12000, 16000]})
    up, u = _tiny(), _utt(ph)
    maps = attention_maps(up, u)
    stats = attention_stats(up, Corpus([u]))
    for head in maps.heads:
        got = head_summary(maps, 1, head)
        want = stats[(stats["layer"] == 1) & (stats["head"] == head)].iloc[0]
        assert got["same_phone"] == pytest.approx(want["same_phone"], abs=1e-6)
        assert got["same_word"] == pytest.approx(want["same_word"], abs=1e-6)


def test_capture_from_two_threads_leaves_torch_unpatched():
    """``capture_attention`` swaps ``torch.nn.functional.scaled_dot_product_attention`` (a
    process-wide global) and restores what it saw on entry. Two threads computing
    attention (a notebook's background widget and a loop, or a threaded server) whose
    captures overlap but do not nest (A enters, B enters, A leaves, B leaves) end with
    A's wrapper installed for good (B restores it), and B's own forward runs unwrapped
    and is refused ("could not read the attention probabilities"). Right: the global is
    the original after both, and each thread gets its maps (a lock, a thread-local
    dispatch, or a clear refusal of concurrent use that leaves torch as it was)."""
    orig_sdpa, orig_mha = F.scaled_dot_product_attention, F.multi_head_attention_forward
    a_up, b_up = _tiny(0), _tiny(1)
    u = _utt(None, n=8000)
    a_in, a_done = threading.Event(), threading.Event()
    errors = {}

    def hold_a(module, args):  # A's forward starts (inside A's capture) ...
        a_in.set()
        b_in.wait(30)          # ... once B is inside its capture too

    b_in = threading.Event()

    def hold_b(module, args):  # B's forward starts after A's capture ended
        b_in.set()
        a_done.wait(30)

    ha = a_up.register_forward_pre_hook(hold_a)
    hb = b_up.register_forward_pre_hook(hold_b)

    def run_a():
        try:
            attention_maps(a_up, u)
        except Exception as e:  # noqa: BLE001
            errors["a"] = e
        finally:
            a_done.set()

    def run_b():
        a_in.wait(30)
        try:
            attention_maps(b_up, u)
        except Exception as e:  # noqa: BLE001
            errors["b"] = e

    threads = [threading.Thread(target=run_a), threading.Thread(target=run_b)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        leaked = F.scaled_dot_product_attention is not orig_sdpa
    finally:
        F.scaled_dot_product_attention, F.multi_head_attention_forward = orig_sdpa, orig_mha
        ha.remove()
        hb.remove()
    assert not leaked, "torch.nn.functional.scaled_dot_product_attention left wrapped"
    assert not errors, errors


def _store(labels):
    hidden, tables, _ = _abx_case.case()
    return LayerStore.from_tensors(hidden, downsample_rates=[320, 320], labels=labels,
                                   phones=tables)


def test_labels_column_named_context_is_not_silently_shadowed():
    """docs/measures.md: a label is "any column of the labels, or 'context'". A labels
    column named ``context`` (e.g. recording context "clean"/"noisy") is silently
    ignored: ``by="context"`` scores within neighbouring phones instead, and the result
    is the same as with no such column. Right: refuse the ambiguous name (or use the
    column), naming the argument and the fix (rename the column)."""
    _, _, labels = _abx_case.case()
    rec = labels.assign(context=np.where(np.arange(len(labels)) % 2, "noisy", "clean"))
    try:
        with_col = abx_layers(_store(rec), on="phone", by="context", layers=[0], device="cpu")
    except ValueError as e:  # a refusal naming the clash is right too
        assert "context" in str(e)
        return
    by_col = abx_layers(_store(rec.rename(columns={"context": "rec"})), on="phone", by="rec",
                        layers=[0], device="cpu")
    assert with_col["abx_error"].iat[0] == pytest.approx(by_col["abx_error"].iat[0]), \
        "the labels' 'context' column was ignored without a word (neighbouring phones used)"


def test_labels_column_named_like_a_tier_is_not_silently_shadowed():
    """The same for a labels column named ``phone`` (an utterance-level label, e.g. a
    phone-set or condition code): ``on="speaker", by="phone"`` silently uses the
    alignment's phones and never reads the column. Right: refuse the clash with the
    tier names, naming the column and the fix (or use the column)."""
    _, _, labels = _abx_case.case()
    odd = labels.assign(phone=["x"] * len(labels))
    try:
        got = abx_layers(_store(odd), on="speaker", by="phone", layers=[0], device="cpu")
    except ValueError as e:  # a refusal naming the clash is right
        assert "phone" in str(e)
        return
    by_col = abx_layers(_store(odd.rename(columns={"phone": "code"})), on="speaker",
                        by="code", layers=[0], device="cpu")
    assert got["abx_error"].iat[0] == pytest.approx(by_col["abx_error"].iat[0]), \
        "the labels' 'phone' column was ignored without a word (the phone tier used)"


@pytest.mark.parametrize("tier", ["no word column", "empty words"])
def test_by_word_without_a_word_tier_is_refused(tier):
    """``by="word"`` on phone items reads each phone's word; with an alignment that has no
    word tier (no ``word`` column, or every word ""), every phone silently gets the word
    "" and the task is scored as if by=() (same number, no warning), whereas a labels
    column missing a value is refused ("an utterance without a value of a label the task
    uses [is] refused", docs/measures.md). Right: refuse, naming the word tier and the
    fix (load a word tier, or drop by="word")."""
    hidden, tables, labels = _abx_case.case()
    tabs = ([t.drop(columns=["word"]) for t in tables] if tier == "no word column"
            else [t.assign(word="") for t in tables])
    st = LayerStore.from_tensors(hidden, downsample_rates=[320, 320], labels=labels,
                                 phones=tabs)
    with pytest.raises((ValueError, KeyError), match="word"):
        abx_layers(st, on="phone", by="word", layers=[0], device="cpu")


def test_two_by_labels_whose_values_contain_the_separator_do_not_merge_groups():
    """The units (and the subsampling groups, and the collapse) key the by/across values
    by joining them with "\\x1f": values ("a\\x1fb", "c") and ("a", "b\\x1fc") become one
    key, so items of two different by groups are scored as one group (A, B and X from
    different groups), silently. Labels are free text from a CSV, so this is rare but
    unrefused. Right: keys that cannot collide (tuples, or factorized codes) so the
    result equals that of one column naming the same two groups, or a refusal naming
    the character."""
    _, _, labels = _abx_case.case()
    first = (labels.speaker == "spkA").to_numpy()
    lab = labels.assign(c1=np.where(first, "a\x1fb", "a"), c2=np.where(first, "c", "b\x1fc"),
                        grp=np.where(first, "g1", "g2"))
    st = _store(lab)
    try:
        two = abx_layers(st, on="phone", by=["c1", "c2"], layers=[0], device="cpu")
    except ValueError as e:
        assert "\\x1f" in str(e) or "separator" in str(e)
        return
    one = abx_layers(st, on="phone", by="grp", layers=[0], device="cpu")
    assert two["abx_error"].iat[0] == pytest.approx(one["abx_error"].iat[0])
    assert two["n_cells"].iat[0] == one["n_cells"].iat[0]


def test_max_items_as_a_list_pair_is_taken_or_refused_naming_the_pair_form():
    """``max_items=[10, 2]`` (a pair as a list, as JSON/YAML configs and argparse give
    it) is refused with "max_items must be a whole number, got [10, 2]", which names
    neither the pair form nor the fix. Right: take a list pair as the tuple (same table
    as ``max_items=(10, 2)``), or refuse saying a pair is a tuple ``(items, X groups)``."""
    st = _store(_abx_case.case()[2])
    try:
        got = abx_layers(st, across="speaker", max_items=[10, 2], layers=[0], device="cpu")
    except (TypeError, ValueError) as e:
        assert "pair" in str(e) or "tuple" in str(e), str(e)
        return
    want = abx_layers(st, across="speaker", max_items=(10, 2), layers=[0], device="cpu")
    pd.testing.assert_frame_equal(got, want)


def test_attention_map_draws_a_line_at_each_segment_boundary():
    """docs/attention.md: ``plot.attention_map`` draws "a white line at each segment
    boundary", but it finds segments as runs of equal frame labels, so the boundary
    between two adjacent phones with one label ("a" "a", e.g. "this sound") or two
    words with one spelling ("the the", distinct ``word_index``) gets no line and their
    tier labels are drawn as one segment. Here three phone boundaries draw one line.
    Right: a line at every segment boundary (segments by row, word_index), as
    attention_stats counts them."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from s3viz.plot import attention_map

    ph = pd.DataFrame({"phone": ["a", "a", "b", "b"], "word": ["w", "w", "w", "w"],
                       "word_index": [0, 0, 1, 1], "start": [0, 4000, 8000, 12000],
                       "end": [4000, 8000, 12000, 16000]})
    maps = attention_maps(_tiny(), _utt(ph))
    ax = attention_map(maps)
    try:
        xs = {round(float(ln.get_xdata()[0]), 3) for ln in ax.lines
              if len(set(np.ravel(ln.get_xdata()))) == 1}
    finally:
        plt.close(ax.figure)
    phone = maps.frame_labels("phone")
    assert len(xs) == 3, f"vertical boundary lines at {sorted(xs)} for phones {list(phone)}"


@pytest.mark.parametrize("task", [dict(on="speaker", by=()), dict(across="speaker", by=())])
def test_missing_speaker_column_advice_fits_the_task(task):
    """Without a ``speaker`` column, ``on="speaker"`` (or ``across="speaker"``) with
    ``by=()`` is refused with "... or pass by=() for none": the user already passed
    by=(), and the speaker is not a by label here, so the advice cannot be followed.
    Right: a message naming the argument that uses the speaker (on / across) and a fix
    that works (add a speaker column, or choose another on/across label)."""
    _, _, labels = _abx_case.case()
    st = _store(labels[["id"]])
    with pytest.raises(ValueError) as e:
        abx_layers(st, layers=[0], device="cpu", **task)
    msg = str(e.value)
    assert "by=()" not in msg, msg
    assert ("on" if "on" in task else "across") in msg.replace("one", ""), msg


def test_bootstrap_with_an_utterance_missing_its_speaker_says_so():
    """Six speakers, one utterance with no speaker: ``bootstrap=`` is refused with "ABX
    intervals resample speakers, and the corpus has one", which is false (it has six)
    and hides the cause. Right: name the utterance(s) without a speaker and the fix (fill
    the speaker, or leave them out with utterances=)."""
    _, _, labels = _abx_case.case()
    spk = [f"s{i // 2}" for i in range(len(labels))]
    spk[0] = None
    st = _store(labels.assign(speaker=spk))
    with pytest.raises(ValueError) as e:
        abx_layers(st, layers=[0], device="cpu", bootstrap=100)
    msg = str(e.value)
    assert "has one" not in msg, msg
    assert "spkA_u0" in msg or "utterances=" in msg, msg


def test_a_label_spelling_one_number_two_ways_is_refused_as_for_probes():
    """s3viz refuses a label whose values spell one number two ways ("7" and "7.0"; as
    ``s3viz.probe.targets.check_classes`` does for every probe target: "only the user
    can say if they are one class"). ABX reads labels columns without that check:
    speaker ids 7 and "7.0" (a CSV column read as text in one file, as numbers in
    another) silently become two speakers, so ``by="speaker"`` splits one speaker's
    items into two groups. Right: the same refusal, naming the label and the values."""
    _, _, labels = _abx_case.case()
    spk = np.array(labels.speaker, dtype=object)
    first = spk == "spkA"
    spk[first] = [7, "7.0", 7, "7.0"]  # one speaker, spelled two ways
    st = _store(labels.assign(speaker=spk))
    with pytest.raises(ValueError, match="7"):
        abx_layers(st, on="phone", by="speaker", layers=[0], device="cpu")
