"""The measure engine: :func:`run_measures` runs any list of :class:`Measure` over one
source (a :class:`StoreSource` or :class:`StreamSource`, whole or one shard whose state
is summed over ranks): ``docs/streaming.md``.
"""

from __future__ import annotations

import copy
import sys
import time
from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd
import torch

from .. import _validate as _v
from .._labels import label_strings
from ..align import conv_lengths, layer_geometry
from ..align import frame_labels as _align_frame_labels
from ..align import checked_frame_values as _align_frame_values
from ..extraction import BatchRunner, bucket_plan
from ..upstreams._hub import weights_of

__all__ = ["Batch", "Context", "Measure", "StoreSource", "StreamSource", "run_measures"]


def _identity(t: torch.Tensor) -> torch.Tensor:
    return t


class Measure:
    """One measure: declared state, ``update(batch)`` per batch, ``compute()`` at the end.

    Subclasses set :attr:`name` (the key of the result) and :attr:`passes`,
    declare state in :meth:`setup` with :meth:`add_state`, and implement
    :meth:`update`, optionally :meth:`end_pass`, and :meth:`compute`. Nothing
    in a measure calls a collective: the driver merges the declared state of
    pass ``p`` over ranks after that pass, before ``end_pass(p)``.
    """

    name = "measure"
    passes = 1

    def __init__(self) -> None:
        self._states: dict[str, tuple[object, int]] = {}

    def add_state(self, name: str, default, merge="sum", *, after_pass: int = 0) -> None:
        """Declare state ``name`` (set as an attribute) and how it merges over ranks.

        Args:
            default: the initial value (a tensor, or any object ``merge`` reads).
            merge: ``"sum"`` (a tensor summed over ranks) or ``fn(value, reduce) ->
                value`` for state that needs more than a sum (``reduce`` sums a
                tensor over ranks, the identity on one process).
            after_pass: the pass after which the state is complete and merged.
        """
        if merge != "sum" and not callable(merge):
            raise ValueError(f"merge must be 'sum' or a callable, got {merge!r}")
        setattr(self, name, default)
        self._states[name] = (merge, int(after_pass))

    def merge(self, pass_index: int, reduce) -> None:
        """Merge the state declared for ``pass_index`` over ranks (called by the driver)."""
        for name, (merge, after) in self._states.items():
            if after != pass_index:
                continue
            value = getattr(self, name)
            if value is None:
                continue
            setattr(self, name, reduce(value) if merge == "sum" else merge(value, reduce))

    def setup(self, ctx: Context) -> None:
        """Check the task against the corpus and allocate state (before any pass)."""

    def update(self, batch: Batch, pass_index: int) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def end_pass(self, pass_index: int) -> None:
        """After pass ``pass_index``, its state merged over ranks."""

    def compute(self) -> pd.DataFrame:  # pragma: no cover - abstract
        """The measure's table (or ``{"": table, key: second table}``; the driver names a
        second table ``"<name>_<key>"``: tables never travel in ``attrs``, which pandas
        copies into every table derived from them)."""
        raise NotImplementedError


class Context:
    """What every measure may read before and during the passes.

    Attributes:
        meta: the whole corpus's frame-free metadata (``ids``, ``labels``,
            ``phones``, ``tracks``), the same on every rank.
        positions: corpus positions of this rank's utterances.
        layer_ids, sizes, rates, fields: per analysed layer, the upstream's
            hidden-state index, hidden size, downsample rate and receptive field.
        device: where measures keep their state and compute.
        reduce: sums a tensor over ranks (the identity on one process).
        weights: the upstream's or store's weights (``attrs["weights"]``).
        store_dtype: the dtype frames were produced in (for the numerics guards);
            ``read_dtype`` the one batches come in (float64 for a float64 store).
        layer_index: per analysed layer, its number in the tables (the store's
            layer index; 0.. for a stream).
    """

    def __init__(self, meta, positions, layer_ids, sizes, rates, fields, device, reduce,
                 weights, store_dtype, lengths_fn, layer_index=None):
        self.meta, self.positions = meta, positions
        self.layer_ids, self.sizes = list(layer_ids), list(sizes)
        self.rates, self.fields = list(rates), list(fields)
        self.device, self.reduce, self.weights = device, reduce, weights
        self.store_dtype = store_dtype
        self.read_dtype = torch.float64 if store_dtype == torch.float64 else torch.float32
        self.layer_index = list(range(len(self.sizes)) if layer_index is None else layer_index)
        self._lengths_fn, self._lengths = lengths_fn, None

    @property
    def num_layers(self) -> int:
        return len(self.sizes)

    def lengths(self) -> np.ndarray:
        """``(utterances, layers)`` frames of every corpus utterance (all ranks).

        From the store, or predicted from the upstream's ``conv_layers``; an
        upstream without them is counted with one more pass (checked in the first).
        """
        if self._lengths is None:
            self._lengths = np.asarray(self._lengths_fn(), dtype=np.int64)
        return self._lengths

    def frame_labels(self, pos: int, layer: int, column: str, num_frames: int) -> np.ndarray:
        """Label strings of the ``num_frames`` frames of utterance ``pos`` in ``layer``
        (``""``: unlabelled), read from its alignment as :meth:`LayerStore.frame_labels`
        reads it."""
        table = self.meta.phones[pos]
        if table is None:
            return np.full(num_frames, "", dtype=object)
        lab = _align_frame_labels(table, num_frames, self.rates[layer], column=column,
                                  receptive_field_samples=self.fields[layer])
        return label_strings(lab)

    def frame_values(self, pos: int, layer: int, column: str, num_frames: int) -> np.ndarray:
        """float64 values of the ``num_frames`` frames of utterance ``pos`` in ``layer``
        (NaN: undefined or not covered), read from its tracks as
        :meth:`LayerStore.frame_values` reads them."""
        table = self.meta.tracks[pos]
        if table is None:
            return np.full(num_frames, np.nan)
        return _align_frame_values(table, num_frames, self.rates[layer], column=column,
                                   receptive_field_samples=self.fields[layer])


class CorpusLayers:
    """The whole corpus's alignments and frame counts from a :class:`Context`, read the
    way :func:`s3viz.segments.segment_table` reads a store (so the segments of a stream
    or a shard are the store's)."""

    def __init__(self, ctx: Context):
        self.ids, self.labels, self.phones = ctx.meta.ids, ctx.meta.labels, ctx.meta.phones
        self.downsample_rates, self.receptive_fields = ctx.rates, ctx.fields
        self._lengths = ctx.lengths()

    def __len__(self) -> int:
        return len(self.ids)

    def lengths(self, layer: int) -> np.ndarray:
        return self._lengths[:, layer]


class Batch:
    """One batch of frames: every analysed layer of a few utterances (derived views are
    computed once and shared by every measure).

    Attributes:
        positions: ``(B,)`` corpus positions.
        frames: per layer a ``(sum of frames, hidden)`` tensor, in ``positions`` order.
        lens: ``(B, layers)`` frames per utterance and layer.
    """

    def __init__(self, ctx: Context, positions: np.ndarray, frames, lens: np.ndarray):
        self.ctx, self.positions, self.frames, self.lens = ctx, positions, frames, lens
        self._cache: dict = {}

    def pooled(self, layer: int) -> torch.Tensor:
        """``(B, hidden)`` mean of each utterance's frames (averaged in float64, as
        :meth:`LayerStore.pooled` does, so streamed = stored), in ``ctx.read_dtype``."""
        key = ("pooled", layer)
        if key not in self._cache:
            if (self.lens[:, layer] == 0).any():
                bad = [self.ctx.meta.ids[int(u)] for u in self.positions[self.lens[:, layer] == 0]]
                raise ValueError(f"{len(bad)} utterance(s) have no frames in layer "
                                 f"{self.ctx.layer_index[layer]} (upstream layer "
                                 f"{self.ctx.layer_ids[layer]}; e.g. {bad[:5]}), so no pooled "
                                 "vector; leave them out")
            self._cache[key] = torch.stack([p.mean(0) for p in torch.split(
                self.frames[layer].double(), self.lens[:, layer].tolist())]).to(
                self.ctx.read_dtype)
        return self._cache[key]

    def frame_labels(self, layer: int, column: str) -> np.ndarray:
        """``(sum of frames,)`` label strings of the batch's frames in ``layer``."""
        c = self.ctx
        key = ("labels", column, c.rates[layer], c.fields[layer], self.lens[:, layer].tobytes())
        if key not in self._cache:
            parts = [c.frame_labels(int(u), layer, column, int(n))
                     for u, n in zip(self.positions, self.lens[:, layer])]
            self._cache[key] = np.concatenate(parts) if parts else np.zeros(0, dtype=object)
        return self._cache[key]

    def frame_values(self, layer: int, column: str) -> np.ndarray:
        """``(sum of frames,)`` float64 track values of the batch's frames in ``layer``
        (NaN where undefined), as :meth:`LayerStore.frame_values` gives them."""
        c = self.ctx
        key = ("values", column, c.rates[layer], c.fields[layer], self.lens[:, layer].tobytes())
        if key not in self._cache:
            parts = [c.frame_values(int(u), layer, column, int(n))
                     for u, n in zip(self.positions, self.lens[:, layer])]
            self._cache[key] = np.concatenate(parts) if parts else np.zeros(0)
        return self._cache[key]


# -- sources -----------------------------------------------------------------


class StoreSource:
    """Batches of a :class:`~s3viz.store.LayerStore` (memory or disk), chunk by chunk.

    Args:
        store: the store (whole corpus, or this rank's shard).
        meta: the whole corpus (``ids``, ``labels``, ``phones``, ``tracks``) when ``store``
            is one shard; None: the store itself.
        positions: corpus positions of the store's utterances (a shard); None:
            ``0..len(store)``.
        layers: the stored layers to analyse (default all).
    """

    def __init__(self, store, meta=None, positions=None, layers=None):
        self.store = store
        self.layers = _v.stored_layers(store, layers)
        self.meta = store if meta is None else meta
        n = len(self.meta)
        self.positions = (np.arange(n, dtype=np.int64) if positions is None
                          else np.asarray(positions, dtype=np.int64))
        if self.positions.ndim != 1 or len(self.positions) != len(store) or (
                len(self.positions) and not 0 <= self.positions.min() <= self.positions.max() < n):
            raise ValueError(f"positions must be the {len(store)} corpus positions (in "
                             f"[0, {n})) of the store's utterances, got {len(self.positions)}")
        want = [str(self.meta.ids[int(i)]) for i in self.positions]
        if [str(u) for u in store.ids] != want:
            raise ValueError("the store must hold the corpus utterances at `positions`, in that "
                             "order (a shard's store: extract(upstream, corpus[positions]))")
        self.passes = 0

    def context(self, device, reduce) -> Context:
        st = self.store

        def lengths():
            mine = np.stack([np.asarray(st.lengths(s)) for s in range(st.num_layer)], 1) \
                if len(st) else np.zeros((0, st.num_layer), dtype=np.int64)
            mine = mine[:, self.layers]
            if self.meta is st:
                return mine
            out = torch.zeros(len(self.meta), len(self.layers), dtype=torch.int64)
            out[torch.from_numpy(self.positions)] = torch.from_numpy(mine)
            return reduce(out).numpy()

        pick = self.layers
        return Context(self.meta, self.positions, [st.layer_ids[i] for i in pick],
                       [st.hidden_sizes[i] for i in pick],
                       [st.downsample_rates[i] for i in pick],
                       [st.receptive_fields[i] for i in pick], device, reduce,
                       weights_of(st), st.store_dtype, lengths, layer_index=pick)

    def each(self, ctx: Context, fn) -> None:
        """Call ``fn(batch)`` for every stored chunk."""
        for utts, frames, lens in self.store.iter_chunks(dtype=ctx.read_dtype):
            if self.layers != list(range(self.store.num_layer)):
                frames, lens = [frames[i] for i in self.layers], lens[:, self.layers]
            fn(Batch(ctx, self.positions[utts], frames, lens))


class CorpusMeta:
    """The corpus's frame-free metadata, as measures read it."""

    def __init__(self, corpus):
        self.ids = corpus.ids
        self.labels = corpus.labels
        self.phones = _CorpusTables(corpus, "_phones_view")
        self.tracks = _CorpusTables(corpus, "_tracks_view")

    def __len__(self) -> int:
        return len(self.ids)


class _CorpusTables(Sequence):
    """Every utterance's alignment or tracks, read when asked (``Utterance._phones_view``,
    ``_tracks_view``): a lazy corpus of many hours keeps them packed through the run."""

    def __init__(self, corpus, view: str):
        self._utts, self._view = list(corpus), view

    def __len__(self) -> int:
        return len(self._utts)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [getattr(u, self._view)() for u in self._utts[i]]
        return getattr(self._utts[i], self._view)()


def _predicted_lengths(upstream, layer_ids, num_samples: np.ndarray) -> np.ndarray | None:
    """Frames per utterance and layer from the upstream's ``conv_layers``, or None."""
    cols = []
    for layer_id in layer_ids:
        try:
            _, _, conv = layer_geometry(upstream, layer_id)
        except (TypeError, IndexError, ValueError):
            return None
        if conv is None:
            return None
        cols.append(conv_lengths(torch.as_tensor(num_samples), conv).numpy().astype(np.int64))
    return np.stack(cols, 1)


class StreamSource:
    """Batches of an upstream run (again in each pass) over the corpus positions
    ``positions`` (this rank's shard) of the whole corpus; no frame kept."""

    def __init__(self, upstream, corpus, layer_ids, sizes, rates, fields, device, move,
                 positions, batch_size, max_batch_seconds, progress=False):
        self.upstream, self.corpus = upstream, corpus
        self.layer_ids, self.sizes, self.rates, self.fields = layer_ids, sizes, rates, fields
        self.device, self.positions, self.progress = device, positions, progress
        self.meta = CorpusMeta(corpus)
        self.num_samples = np.array([u.num_samples for u in corpus], dtype=np.int64)
        self.plan = [list(map(int, b)) for b in bucket_plan(self.num_samples[positions],
                                                              batch_size, max_batch_seconds)]
        self.runner = BatchRunner(upstream, corpus[positions.tolist()], layer_ids, sizes,
                                  device, move, None, torch.float32, False, "stream")
        self.passes = 0
        self.expected = None  # predicted frames, checked against the upstream's in pass 1

    def context(self, device, reduce) -> Context:
        def lengths():
            pred = _predicted_lengths(self.upstream, self.layer_ids, self.num_samples)
            if pred is not None:
                self.expected = pred
                return pred
            mine = torch.zeros(len(self.corpus), len(self.sizes), dtype=torch.int64)
            ctx_local = Context(self.meta, self.positions, self.layer_ids, self.sizes,
                                self.rates, self.fields, device, reduce, "", torch.float32,
                                lambda: None)
            agree(lambda: self._each(ctx_local, lambda b: mine.__setitem__(
                torch.from_numpy(b.positions), torch.from_numpy(b.lens))), reduce)
            return reduce(mine).numpy()

        return Context(self.meta, self.positions, self.layer_ids, self.sizes, self.rates,
                       self.fields, device, reduce, weights_of(self.upstream), torch.float32,
                       lengths)

    def _each(self, ctx, fn) -> None:
        self.passes += 1

        def sink(c, utts, frames, lens):
            fn(Batch(ctx, self.positions[utts], frames, lens))

        self.runner.run(list(enumerate(self.plan)), sink, done=0)

    def each(self, ctx: Context, fn) -> None:
        """Call ``fn(batch)`` for every batch of one upstream pass over the shard."""
        def check(batch):
            if self.expected is not None:
                want = self.expected[batch.positions, 0]
                if not np.array_equal(want, batch.lens[:, 0]):
                    j = int(np.flatnonzero(want != batch.lens[:, 0])[0])
                    raise RuntimeError(
                        f"the upstream gave {int(batch.lens[j, 0])} frames in stored layer 0 "
                        f"for utterance {ctx.meta.ids[int(batch.positions[j])]!r}, but its "
                        f"conv_layers predict {int(want[j])}: its conv_layers do not describe "
                        "its output lengths")
            fn(batch)

        self._each(ctx, check)


# -- the driver --------------------------------------------------------------


def agree(work: Callable[[], None], reduce) -> None:
    """Run ``work`` (no collective calls inside), then stop every shard if any failed
    (rather than leave the others waiting in the next ``reduce``)."""
    err = None
    try:
        work()
    except Exception as e:  # noqa: BLE001 - re-raised below, after the agreement
        err = e
    failed = reduce(torch.tensor([0.0 if err is None else 1.0], dtype=torch.float64))
    if err is not None:
        raise err
    if float(failed[0]) > 0:
        raise RuntimeError("another shard failed in this run (its own error says why); this "
                           "shard stops too")


def _trim_heap() -> None:
    """Give freed heap pages back to the OS (glibc ``malloc_trim``), or resident memory
    creeps up over a long stream as batches of different shapes fragment the heap."""
    if _LIBC is not None:
        _LIBC.malloc_trim(0)


def _load_libc():
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.malloc_trim.argtypes = [ctypes.c_size_t]
        return libc
    except (OSError, AttributeError):  # musl or another libc
        return None


_LIBC = _load_libc()


def check_same_layers(ctx: Context, reduce) -> None:
    """Every rank analyses the same layers (the same upstream hidden states and sizes)."""
    def spread(values):
        x = torch.tensor(values, dtype=torch.float64)
        n, s1, s2 = (reduce(t.clone()) for t in (torch.ones_like(x), x, x * x))
        return bool((s2 * n - s1 * s1).abs().max() > 0)

    if spread([float(ctx.num_layers)]) or spread([float(v) for v in ctx.layer_ids + ctx.sizes]):
        raise ValueError(f"the shards hold different layers (this one: upstream layers "
                         f"{ctx.layer_ids}, hidden sizes {ctx.sizes}); give every rank a store "
                         "of the same upstream layers")


def check_cover(positions: np.ndarray, meta, reduce) -> None:
    """Every utterance of the corpus in exactly one shard (the same check on every rank)."""
    cover = torch.zeros(len(meta), dtype=torch.float64)
    cover[torch.from_numpy(positions)] = 1.0
    cover = reduce(cover)
    if not bool((cover == 1).all()):
        bad = [meta.ids[i] for i in torch.nonzero(cover != 1).squeeze(1).tolist()[:5]]
        raise ValueError(f"the shards must hold every utterance of the corpus exactly once; "
                         f"e.g. {bad} are missing or in several shards")


def run_measures(measures: Sequence[Measure], source, *, device=None, reduce=None,
                 progress: bool = False) -> dict[str, pd.DataFrame]:
    """Run ``measures`` over ``source`` in as many passes as the measures need.

    Args:
        measures: :class:`Measure` objects with distinct names.
        source: a :class:`StoreSource` or :class:`StreamSource`.
        device: where measures keep state (default: the CPU).
        reduce: ``reduce(tensor) -> tensor`` summing over ranks (e.g.
            :func:`s3viz.distributed.all_reduce_sum`) for a sharded source; None:
            one process holds the whole corpus.
        progress: print each pass's time to stderr.

    Returns:
        ``{measure.name: table}`` (and ``"<name>_<key>"`` for a measure's second
        table, e.g. ``"abx_cells"``); every table has ``attrs["weights"]``.
    """
    # a measure object is its settings; each run works on its own copy (so one object
    # can serve several runs, or threads standing in for ranks)
    measures = [copy.deepcopy(m) for m in measures]
    names = [m.name for m in measures]
    if len(set(names)) != len(names):
        raise ValueError(f"measures must have distinct names, got {names}")
    if not measures:
        raise ValueError("nothing to compute: give at least one measure")
    sharded = reduce is not None
    reduce = reduce or _identity
    dev = torch.device("cpu") if device is None else torch.device(device)
    ctx = source.context(dev, reduce)
    if sharded:
        check_same_layers(ctx, reduce)
        check_cover(source.positions, ctx.meta, reduce)
    elif len(source.positions) != len(ctx.meta):
        raise ValueError("a shard of the corpus needs `reduce` (a sum over shards)")
    for m in measures:
        m.setup(ctx)
    for p in range(max(m.passes for m in measures)):
        active = [m for m in measures if m.passes > p]
        t0 = time.perf_counter()

        def one(batch, active=active, p=p):
            for m in active:
                m.update(batch, p)
            _trim_heap()

        agree(lambda: source.each(ctx, one), reduce)
        for m in active:
            m.merge(p, reduce)
            m.end_pass(p)
        if progress:
            print(f"s3viz: pass {p + 1} over {len(source.positions)} utterances in "
                  f"{time.perf_counter() - t0:.1f} s", file=sys.stderr)
    out = {}
    for m in measures:
        tables = m.compute()
        if isinstance(tables, pd.DataFrame):
            tables = {"": tables}
        for key, table in tables.items():  # a second table: "<name>_<key>"
            table.attrs["weights"] = ctx.weights
            out[m.name if key == "" else f"{m.name}_{key}"] = table
    return out
