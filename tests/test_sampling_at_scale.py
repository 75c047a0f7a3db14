"""Sampling at scale: the fast decode against RDT's, ``sample_to``, threads and ``n_jobs``."""

from __future__ import annotations

import sys
import threading

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.utils import check_random_state

import skdpflow.synthesizer as synthesizer_module
from skdpflow import DPFlowSynthesizer
from skdpflow._threads import auto_threads, resolve_n_jobs, torch_threads, usable_cpus
from skdpflow._writers import TableWriter, rechunk
from skdpflow.cli import main
from skdpflow.domain import Domain, public_dtype

FAST = dict(epochs=1, batch_size=64, n_stages=2, hidden_size=8, verbose=False)

# Every column kind, with the nullable ones the chunked writers must keep typed: a nullable
# integer, a categorical column with missing values, a nullable boolean, a zoned datetime,
# and a one-category column (no encoded dimension at all).
DOMAIN = {
    "age": {"type": "numerical", "min": 18, "max": 90, "integer": True, "nullable": True},
    "income": {"type": "numerical", "min": 0, "max": 1_000_000, "integer": True},
    "score": {"type": "numerical", "min": 0, "max": 100, "nullable": True},
    "city": {"type": "categorical", "categories": ["Paris", "Lyon", "Nice", "Lille"],
             "nullable": True},
    "flag": {"type": "boolean", "nullable": True},
    "when": {"type": "datetime", "min": "2019-01-01", "max": "2021-12-31",
             "timezone": "Europe/Paris", "nullable": True},
    "one": {"type": "categorical", "categories": ["only"]},
}


def _frame(n: int = 500, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    age = pd.array(rng.integers(18, 80, n), dtype="Int64")
    age[rng.random(n) < 0.2] = pd.NA
    score = rng.normal(50, 10, n)
    score[rng.random(n) < 0.1] = np.nan
    city = rng.choice(["Paris", "Lyon", "Nice"], n).astype(object)
    city[rng.random(n) < 0.2] = None
    flag = pd.array(rng.random(n) < 0.3, dtype="boolean")
    flag[rng.random(n) < 0.1] = pd.NA
    when = pd.Series(pd.Timestamp("2020-01-01") + pd.to_timedelta(rng.integers(0, 365, n),
                                                                   unit="h"))
    when = when.dt.tz_localize("Europe/Paris").where(rng.random(n) > 0.1)
    income = np.where(rng.random(n) < 0.6, 0, rng.integers(1, 100_000, n))
    return pd.DataFrame({"age": age, "income": income, "score": score, "city": city,
                         "flag": flag, "when": when, "one": "only"})


@pytest.fixture(scope="module")
def model() -> DPFlowSynthesizer:
    synth = DPFlowSynthesizer(epsilon=float("inf"), random_state=0, n_jobs=1, **FAST)
    return synth.fit(_frame(), domain=DOMAIN)


def _old_sample(self: DPFlowSynthesizer, n: int, random_state: int, chunk: int
                ) -> pd.DataFrame:
    """``sample`` as it was before the fast decode and the threads (the reference)."""
    seed = int(check_random_state(random_state).randint(0, 2**31 - 1))
    generator = torch.Generator().manual_seed(seed)
    parts = []
    for start in range(0, n, chunk):
        size = min(chunk, n - start)
        with torch.no_grad():
            z = self.flow_.sample(size, generator=generator).double().numpy()
        parts.append(self.type_layer_.reverse(self.encoder_.decode(z)))
    out = pd.concat(parts, ignore_index=True) if len(parts) > 1 else parts[0]
    return out[list(self.feature_names_in_)]


# ------------------------------------------------------------------ the fast decode
@pytest.mark.parametrize("scale", [1.0, 3.0])
def test_fast_decode_equals_the_rdt_reverse(model, scale):
    """decode_columns + reverse_columns give the frame RDT's reverse gives, exactly."""
    rng = np.random.default_rng(int(scale))
    z = rng.normal(size=(3000, model.encoder_.n_dims)) * scale
    z[:50] = rng.choice([-40.0, -8.0, 0.0, 8.0, 40.0], size=(50, z.shape[1]))  # the edges
    slow = model.type_layer_.reverse(model.encoder_.decode(z))
    fast = model.type_layer_.reverse_columns(model.encoder_.decode_columns(z))
    pd.testing.assert_frame_equal(fast, slow, check_exact=True)
    for name, col in model.domain_.columns.items():
        assert fast[name].dtype == public_dtype(col), name
    # Not vacuous: the nullable columns hold missing values, and the others hold several.
    assert fast[["age", "city", "flag", "when"]].isna().any().all()
    assert fast["city"].nunique() > 1 and fast["income"].nunique() > 1


def test_sample_gives_the_rows_of_the_old_code_path_with_any_threads(model, monkeypatch):
    """Same seed, same frame: before the change, and with 1, 2 or 3 sampling threads (the
    flow alone: the old code had no category weights)."""
    monkeypatch.setattr(model, "category_weights_", None)
    monkeypatch.setattr(synthesizer_module, "SAMPLE_CHUNK", 2 * 8192)
    n = 3 * 2 * 8192 + 1000  # several blocks and a short one: the pipeline's every branch
    expected = _old_sample(model, n, 7, 2 * 8192)
    for n_jobs in (1, 2, 3):
        model.set_params(n_jobs=n_jobs)
        pd.testing.assert_frame_equal(model.sample(n, random_state=7), expected,
                                      check_exact=True)
    model.set_params(n_jobs=1)
    assert not model.sample(n, random_state=8).equals(expected)  # the seed matters


@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("n_jobs", [1, 2])
def test_non_finite_rows_of_the_flow_are_drawn_again(model, monkeypatch, weighted, n_jobs):
    """A row the flow's float32 arithmetic leaves non-finite never reaches the decode (which
    would fail on it): it is drawn again (or rejected), with a warning; the rows are whole."""
    if not weighted:
        monkeypatch.setattr(model, "category_weights_", None)
    else:
        assert model.category_weights_ is not None
    inverse = type(model.flow_).inverse
    calls = {"n": 0}

    def spoiled(self, z, accept=None):
        x = inverse(self, z, accept)
        calls["n"] += 1
        if calls["n"] == 1:  # the first block: a few rows broken
            x = x.clone()
            x[::97, 0] = float("nan")
            x[5, -1] = float("inf")
        return x

    monkeypatch.setattr(type(model.flow_), "inverse", spoiled)
    model.set_params(n_jobs=n_jobs)
    with pytest.warns(RuntimeWarning, match="not finite"):
        out = model.sample(3000, random_state=3)
    model.set_params(n_jobs=1)
    assert len(out) == 3000 and calls["n"] >= (1 if weighted else 2)  # redrawn or rejected
    numeric = out.select_dtypes("number")
    assert np.isfinite(numeric.to_numpy(dtype=float)[~numeric.isna().to_numpy()]).all()


def test_weighted_sampling_gives_the_same_rows_with_any_threads(model, monkeypatch):
    """Rejection sampling of the category weights: same seed, same frame, whatever n_jobs;
    sample_to writes the rows sample returns."""
    assert model.category_weights_ is not None
    monkeypatch.setattr(synthesizer_module, "SAMPLE_CHUNK", 2 * 8192)
    n = 3 * 2 * 8192 + 1000
    model.set_params(n_jobs=1)
    expected = model.sample(n, random_state=7)
    assert len(expected) == n
    for n_jobs in (2, 3):
        model.set_params(n_jobs=n_jobs)
        pd.testing.assert_frame_equal(model.sample(n, random_state=7), expected,
                                      check_exact=True)
    model.set_params(n_jobs=1)
    assert not model.sample(n, random_state=8).equals(expected)


@pytest.mark.parametrize("n_jobs", [1, 2])
def test_rejection_after_the_heads_keeps_the_rows_of_rejection_after_the_flow(model,
                                                                              monkeypatch,
                                                                              n_jobs):
    """The weights read only the heads' cells, so the rejection step runs right after the
    heads and the stages on the kept rows only: the same rows as rejecting after the whole
    flow (its slow twin), up to float32 rounding in the stages."""
    weights = model.category_weights_
    assert weights is not None and model.flow_.decides_on_heads(weights.dims)
    monkeypatch.setattr(synthesizer_module, "SAMPLE_CHUNK", 2 * 8192)
    n = 3 * 2 * 8192 + 1000
    model.set_params(n_jobs=n_jobs)
    with monkeypatch.context() as patch:
        patch.setattr(type(model.flow_), "decides_on_heads", lambda self, dims: False)
        late = model.sample(n, random_state=11)
    early = model.sample(n, random_state=11)
    model.set_params(n_jobs=1)
    assert len(early) == len(late) == n
    discrete = ["city", "flag", "one"]
    pd.testing.assert_frame_equal(early[discrete], late[discrete], check_exact=True)
    numeric = early.drop(columns=discrete)
    same = (numeric == late[numeric.columns]) | (numeric.isna() & late[numeric.columns].isna())
    assert float(same.to_numpy().mean()) > 0.999


def test_the_rows_of_a_seed_do_not_depend_on_earlier_calls(model, tmp_path):
    """The heads' probability tables and the category weights' float32 thresholds are caches
    built on first use: a seed gives the same rows from a freshly loaded model and from one
    that sampled a large batch before."""
    path = tmp_path / "model.skdpflow"
    model.save(path)
    fresh = DPFlowSynthesizer.load(path)
    assert "_tables" not in fresh.flow_.__dict__ and not fresh.category_weights_._thresholds
    first = fresh.sample(300, random_state=5)
    assert fresh.flow_.__dict__.get("_tables") and fresh.category_weights_._thresholds
    used = DPFlowSynthesizer.load(path)
    used.sample(20_000, random_state=1)
    pd.testing.assert_frame_equal(used.sample(300, random_state=5), first, check_exact=True)
    pd.testing.assert_frame_equal(model.sample(300, random_state=5), first, check_exact=True)


def test_slices_are_whole_flow_blocks():
    from skdpflow.synthesizer import _slices

    for n, parts in [(65536, 2), (65536, 3), (1000, 2), (8193, 2), (70000, 16)]:
        bounds = _slices(n, parts, 8192)
        assert bounds[0][0] == 0 and bounds[-1][1] == n and len(bounds) <= parts
        assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:]))
        assert all((hi - lo) % 8192 == 0 for lo, hi in bounds[:-1])


# ------------------------------------------------------------------------ sample_to
def _written(path) -> pd.DataFrame:
    if str(path).endswith((".parquet", ".pq")):
        import pyarrow.parquet as pq

        return pq.read_table(path).to_pandas(types_mapper=pd.ArrowDtype)
    return pd.read_csv(path)


def _as_objects(frame: pd.DataFrame) -> list:
    """Values as plain Python objects (missing: None), for comparing across file formats."""
    out = frame.astype(object)
    return out.where(out.notna(), None).to_numpy().tolist()


@pytest.mark.parametrize("suffix", [".parquet", ".csv", ".csv.gz"])
def test_sample_to_writes_the_rows_of_sample_in_typed_chunks(model, tmp_path, monkeypatch,
                                                             suffix):
    if suffix == ".parquet":
        pytest.importorskip("pyarrow")
    chunks = []
    write = TableWriter.write
    monkeypatch.setattr(TableWriter, "write",
                        lambda self, chunk: (chunks.append(chunk), write(self, chunk)))
    n, size = 5000, 1200
    path = model.sample_to(tmp_path / f"fake{suffix}", n, chunk_size=size, random_state=3,
                           progress=False)
    expected = model.sample(n, random_state=3)
    assert [len(c) for c in chunks] == [1200, 1200, 1200, 1200, 200]
    for chunk in chunks:  # every chunk in the domain's dtypes, whatever it holds
        assert chunk.dtypes.to_dict() == expected.dtypes.to_dict()
    pd.testing.assert_frame_equal(pd.concat(chunks, ignore_index=True), expected)
    got = _written(path)
    assert list(got.columns) == list(expected.columns) and len(got) == n
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        meta = pq.ParquetFile(path).metadata
        assert meta.num_row_groups == 5
        assert str(pq.read_schema(path).field("age").type) == "int64"
        assert str(pq.read_schema(path).field("city").type) == "string"
        assert _as_objects(got) == _as_objects(expected)
    else:
        pd.testing.assert_frame_equal(got[["income", "score"]], expected[["income", "score"]],
                                      check_exact=False, rtol=1e-12)
        assert got["age"].isna().equals(expected["age"].isna())
        assert (got["city"].fillna("-") == expected["city"].fillna("-")).all()


def test_parquet_schema_holds_a_chunk_with_no_value_in_a_column(tmp_path):
    pytest.importorskip("pyarrow")
    domain = Domain.from_dict(DOMAIN)
    full = _frame(20)
    for name, col in domain.columns.items():
        full[name] = full[name].astype(public_dtype(col)) if col.type != "datetime" else \
            full[name]
    empty = full.copy()
    for name in ("age", "city", "flag", "when"):  # all missing: pyarrow alone infers null
        empty[name] = pd.Series([None] * len(empty), dtype=full[name].dtype)
    writer = TableWriter(tmp_path / "t.parquet", "parquet", domain, list(full.columns))
    writer.write(full)
    writer.write(empty)
    writer.close()
    got = _written(tmp_path / "t.parquet")
    assert len(got) == 40 and got["city"].iloc[20:].isna().all()
    assert got["city"].iloc[:20].notna().sum() == full["city"].notna().sum()


def test_rechunk_keeps_rows_and_order():
    frames = [pd.DataFrame({"a": np.arange(lo, hi)}) for lo, hi in [(0, 5), (5, 6), (6, 17)]]
    for size in (1, 4, 17, 100):
        out = list(rechunk(iter(frames), size))
        assert [len(f) for f in out[:-1]] == [size] * (len(out) - 1)
        assert pd.concat(out)["a"].tolist() == list(range(17))
        assert all(list(f.index) == list(range(len(f))) for f in out)


def test_sample_to_without_pyarrow_names_the_extra_and_writes_nothing(model, tmp_path,
                                                                       monkeypatch):
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # import pyarrow now fails
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    with pytest.raises(ImportError, match=r"skdpflow\[parquet\]"):
        model.sample_to(tmp_path / "fake.parquet", 10)
    assert list(tmp_path.iterdir()) == []
    model.sample_to(tmp_path / "fake.csv", 10, progress=False)  # CSV needs nothing more
    assert len(pd.read_csv(tmp_path / "fake.csv")) == 10


def test_sample_to_refuses_an_unknown_suffix_and_bad_sizes(model, tmp_path):
    with pytest.raises(ValueError, match=r"\.parquet"):
        model.sample_to(tmp_path / "fake.txt", 10)
    with pytest.raises(ValueError, match="chunk_size"):
        model.sample_to(tmp_path / "fake.csv", 10, chunk_size=0)
    with pytest.raises(ValueError, match="n_samples"):
        model.sample_to(tmp_path / "fake.csv", 0)
    model.sample_to(tmp_path / "fake.txt", 10, file_format="csv", progress=False)
    assert len(pd.read_csv(tmp_path / "fake.txt")) == 10


def test_sample_to_shows_progress_on_stderr_only_when_asked(model, tmp_path, capsys):
    model.sample_to(tmp_path / "a.csv", 100, progress=True)
    assert "rows" in capsys.readouterr().err
    model.sample_to(tmp_path / "b.csv", 100)  # verbose=False
    assert capsys.readouterr().err == ""


def test_cli_sample_writes_parquet_and_csv_with_jobs(model, tmp_path, capsys):
    model_file = tmp_path / "m.skdpflow"
    model.save(model_file)
    out = tmp_path / "fake.csv"
    assert main(["sample", str(model_file), "-n", "300", "-o", str(out), "--seed", "1",
                 "--jobs", "2", "--chunk-size", "100", "--quiet"]) == 0
    assert capsys.readouterr().err == ""
    assert len(pd.read_csv(out)) == 300
    other = tmp_path / "fake.txt"  # an unknown suffix: CSV, as before
    assert main(["sample", str(model_file), "-n", "30", "-o", str(other), "--quiet"]) == 0
    assert len(pd.read_csv(other)) == 30
    assert main(["sample", str(model_file), "-n", "3", "-o", str(out), "--force",
                 "--jobs", "0"]) == 2
    assert "--jobs" in capsys.readouterr().err
    if pytest.importorskip("pyarrow"):
        pq = tmp_path / "fake.parquet"
        assert main(["sample", str(model_file), "-n", "300", "-o", str(pq), "--seed", "1",
                     "--quiet"]) == 0
        assert _as_objects(_written(pq)) == _as_objects(model.sample(300, random_state=1))


# --------------------------------------------------------------------------- n_jobs
@pytest.mark.parametrize("cpus, load, others, expected", [
    (2, 0.0, 0, 2),      # idle
    (2, 1.0, 0, 2),      # the load is this process's own recent work
    (2, 1.0, 1, 1),      # one busy neighbour
    (2, 2.3, 2, 1),      # two: never below one thread
    (2, 5.0, None, 1),   # no instant count: the load average alone
    (4, 1.1, 1, 3),
    (8, 0.2, 3, 8),      # short bursts do not count
    (1, 0.0, 0, 1),
])
def test_auto_threads_rule(cpus, load, others, expected):
    assert auto_threads(cpus, load, others) == expected


def test_resolve_n_jobs_follows_scikit_learn():
    cpus = usable_cpus()
    assert resolve_n_jobs(3) == 3
    assert resolve_n_jobs(-1) == cpus
    assert resolve_n_jobs(-2) == max(1, cpus - 1)
    assert resolve_n_jobs(-1000) == 1
    assert 1 <= resolve_n_jobs(None) <= cpus
    with pytest.raises(ValueError, match="n_jobs == 0"):
        resolve_n_jobs(0)


def test_torch_threads_nest_and_restore():
    before = torch.get_num_threads()
    with torch_threads(3) as outer:
        assert outer == 3 and torch.get_num_threads() == 3
        with torch_threads(1):
            assert torch.get_num_threads() == 1
        assert torch.get_num_threads() == 3
    assert torch.get_num_threads() == before


def test_overlapping_calls_from_threads_restore_the_callers_setting():
    """Contexts entered and left in an interleaved order (threads) restore the original."""
    before = torch.get_num_threads()
    entered, leave = threading.Barrier(2), threading.Barrier(2)
    seen = []

    def work(n: int, first_out: bool) -> None:
        with torch_threads(n):
            entered.wait()
            seen.append(torch.get_num_threads())
            if not first_out:
                leave.wait()
        if first_out:
            leave.wait()

    pair = [threading.Thread(target=work, args=(n, n == 3)) for n in (3, 5)]
    for t in pair:
        t.start()
    for t in pair:
        t.join()
    assert len(seen) == 2 and torch.get_num_threads() == before


@pytest.mark.parametrize("method", ["fit", "sample", "score_samples", "sample_to"])
def test_n_jobs_sets_torch_threads_during_the_call_and_restores_them(model, tmp_path,
                                                                     monkeypatch, method):
    seen = []
    original = torch.get_num_threads()
    decode = type(model.encoder_).decode_columns
    cells = type(model.encoder_).cells

    def spy(fn):
        return lambda self, *a: (seen.append(torch.get_num_threads()), fn(self, *a))[1]

    monkeypatch.setattr(type(model.encoder_), "decode_columns", spy(decode))
    monkeypatch.setattr(type(model.encoder_), "cells", spy(cells))
    frame = _frame(200)
    synth = DPFlowSynthesizer(**model.get_params()) if method == "fit" else model
    synth.set_params(n_jobs=3)
    try:
        if method == "fit":
            synth.fit(frame, domain=DOMAIN)
        elif method == "sample":
            synth.sample(10)
        elif method == "score_samples":
            synth.score_samples(frame.head())
        else:
            synth.sample_to(tmp_path / "x.csv", 10)
    finally:
        synth.set_params(n_jobs=1)
    # Sampling runs the flow with one torch thread per Python thread (n_jobs of them).
    assert seen and set(seen) == ({1} if method.startswith("sample") else {3})
    assert torch.get_num_threads() == original


def test_n_jobs_is_saved_and_refused_when_invalid(model, tmp_path):
    model.set_params(n_jobs=-1)
    try:
        model.save(tmp_path / "m.skdpflow")
        assert DPFlowSynthesizer.load(tmp_path / "m.skdpflow").n_jobs == -1
        model.set_params(n_jobs=0)
        with pytest.raises(ValueError, match="'n_jobs' parameter"):
            model.sample(3)
    finally:
        model.set_params(n_jobs=1)
