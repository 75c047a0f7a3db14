"""The SDV adapter: SDV's API (2.x dicts, 1.x DataFrames), domain from metadata, privacy.

Runs against whichever SDV is installed: 2.x in the main environment, 1.38 in the SDGym
environment (docs/sdgym.md); the version-specific I/O is checked in both.
"""

from __future__ import annotations

import logging
import pickle
import re
import struct
import warnings

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("sdv")

from conftest import MIXED_DOMAIN, make_mixed_frame
from sdv.errors import InvalidDataError
from sdv.metadata import Metadata

from skdpflow import DPFlowSynthesizer
from skdpflow._sdv_redaction import (
    SDV_LOGGER_NAMES,
    WITHHELD,
    sdv_logs_silenced,
    value_free_errors,
)
from skdpflow.sdv import SDV_MAJOR, DPFlowSDVSynthesizer

TABLE = "people"
FAST = dict(epsilon=2.0, delta=1e-4, epochs=2, batch_size=64, n_stages=3, hidden_size=16,
            verbose=False, random_state=0)
SENTINEL_SCORE = 987654.25          # declared column, outside its public bounds [0, 100]
SENTINEL_BALANCE = 123456789.125    # undeclared column: its bounds are estimated under DP
SENTINEL_NAME = "SENTINEL-7f3a"     # undeclared categorical column: one row holds it
DECLARED = ["age", "income", "score", "city", "flag", "when"]


def _frame(sentinels: bool = True, n: int = 400) -> pd.DataFrame:
    df = make_mixed_frame(n)
    rng = np.random.default_rng(5)
    df["balance"] = np.round(rng.lognormal(7, 1, n), 2)
    df["team"] = rng.choice(["red", "blue", "green"], n).astype(object)
    df.insert(0, "id", np.arange(n))
    if sentinels:  # row 0: also the "first values" that RDT hashes into its seeds
        df.loc[0, ["score", "balance", "team"]] = [SENTINEL_SCORE, SENTINEL_BALANCE,
                                                   SENTINEL_NAME]
    return df


def _metadata() -> tuple[Metadata, dict]:
    """Metadata for `_frame`; ranges in it (SDV 2.x) or in `domain=` (SDV 1.x)."""
    md = Metadata()
    md.add_table(TABLE)
    md.add_column("id", table_name=TABLE, sdtype="id")
    md.set_primary_key("id", table_name=TABLE)
    sdtypes = {"age": "numerical", "income": "numerical", "score": "numerical",
               "city": "categorical", "flag": "boolean", "when": "datetime",
               "balance": "numerical", "team": "categorical"}
    if SDV_MAJOR < 2:
        for name, sdtype in sdtypes.items():
            md.add_column(name, table_name=TABLE, sdtype=sdtype)
        return md, {"domain": {c: MIXED_DOMAIN[c] for c in DECLARED}}
    for name, sdtype in sdtypes.items():
        col = MIXED_DOMAIN.get(name)
        extra = {}
        if col and name in DECLARED and sdtype in ("numerical", "datetime"):
            extra = {"range_min": col["min"], "range_max": col["max"]}
            if col.get("integer"):
                extra["decimal_places"] = 0
        elif col and "categories" in col:
            extra = {"range_values": col["categories"]}
        if col and col.get("nullable"):
            extra["range_is_nullable"] = True
        md.add_column(name, table_name=TABLE, sdtype=sdtype, **extra)
    return md, {}


def _wrap(df: pd.DataFrame):
    return {TABLE: df} if SDV_MAJOR >= 2 else df


def _table(out) -> pd.DataFrame:
    if SDV_MAJOR >= 2:
        assert isinstance(out, dict) and list(out) == [TABLE]
        return out[TABLE]
    assert isinstance(out, pd.DataFrame)
    return out


def _fit(df: pd.DataFrame) -> DPFlowSDVSynthesizer:
    md, kw = _metadata()
    synth = DPFlowSDVSynthesizer(md, **FAST, **kw)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        synth.fit(_wrap(df))
    return synth


@pytest.fixture(scope="module")
def fitted():
    df = _frame()
    return _fit(df), df


def test_get_parameters_lists_every_estimator_parameter_with_its_default():
    synth = DPFlowSDVSynthesizer(_metadata()[0])
    params = synth.get_parameters()
    assert list(params)[:4] == ["enforce_min_max_values", "enforce_rounding", "locales",
                                "domain"]
    assert {k: v for k, v in params.items() if k in DPFlowSynthesizer().get_params()} == \
        DPFlowSynthesizer().get_params()
    assert len(params) == 4 + len(DPFlowSynthesizer().get_params())


def test_unknown_parameter_is_refused_as_scikit_learn_does():
    with pytest.raises(ValueError, match="Invalid parameter 'epsilom' for estimator "
                                         "DPFlowSDVSynthesizer. Valid parameters are"):
        DPFlowSDVSynthesizer(_metadata()[0], epsilom=1.0)


def test_get_parameters_and_the_wrapped_estimator(fitted):
    synth, _ = fitted
    params = synth.get_parameters()
    assert "metadata" not in params
    assert {k: params[k] for k in FAST} == FAST
    assert params["enforce_min_max_values"] is True
    assert synth._model.get_params() == {k: params[k]
                                         for k in DPFlowSynthesizer().get_params()}


def test_fit_and_sample_speak_the_installed_sdvs_io(fitted):
    synth, df = fitted
    fake = _table(synth.sample(300))
    assert list(fake.columns) == list(df.columns)
    assert fake.dtypes.to_dict() == df.dtypes.to_dict()
    assert fake["id"].is_unique
    assert fake["age"].between(18, 90).all() and fake["score"].dropna().between(0, 100).all()
    assert set(fake["city"].dropna()) <= set(MIXED_DOMAIN["city"]["categories"])
    if SDV_MAJOR >= 2:
        with pytest.raises(Exception, match="dictionary"):
            _fit_bare = DPFlowSDVSynthesizer(_metadata()[0], **FAST)
            _fit_bare.fit(df)


def test_metadata_ranges_are_the_public_domain_and_the_rest_is_estimated(fitted):
    synth, _ = fitted
    report = synth.privacy_report()
    assert sorted(report["domain"]["declared_public"]) == sorted(DECLARED)
    assert sorted(report["domain"]["estimated_with_dp"]) == ["balance", "team"]
    assert report["domain"]["read_from_data_not_private"] == []
    assert report["guarantee_covers_everything"]
    assert report["epsilon_spent"] <= FAST["epsilon"]
    # The flow models the columns; SDV only generates the key.
    assert "id" not in list(synth._model.feature_names_in_)


def _float_patterns(value: float) -> list[bytes]:
    return [repr(value).encode(), struct.pack("<d", value), struct.pack("<f", value)]


def test_a_planted_sentinel_never_reaches_the_saved_file_nor_the_samples(fitted, tmp_path):
    synth, _ = fitted
    path = tmp_path / "synth.pkl"
    synth.save(str(path))
    blob = path.read_bytes() + pickle.dumps(synth)
    for value in (SENTINEL_SCORE, SENTINEL_BALANCE):
        for pattern in _float_patterns(value):
            assert pattern not in blob
    assert SENTINEL_NAME.encode() not in blob
    assert SENTINEL_NAME.encode("utf-16-le") not in blob
    fake = _table(synth.sample(5_000))
    assert not (fake["score"] == SENTINEL_SCORE).any() and fake["score"].max() <= 100
    assert not (fake["balance"] == SENTINEL_BALANCE).any()
    assert SENTINEL_NAME not in set(fake["team"].dropna())


def test_sdvs_processor_is_fitted_on_public_values_only(fitted):
    synth, df = fitted
    neighbour = _fit(df.drop(index=0).reset_index(drop=True))
    # RDT transformers pass the modelled columns through: nothing learned from them.
    transformers = synth._data_processor._hyper_transformer.get_config()["transformers"]
    assert all(transformers[c] is None for c in synth._model.feature_names_in_)
    # Same state whatever the rows: no mean, null rate, frequency, min/max or seed from them.
    for dp in (synth._data_processor, neighbour._data_processor):
        assert dp._dtypes.to_dict() == df.dtypes.to_dict()
    for name in DECLARED:
        ours = synth._data_processor.formatters.get(name)
        theirs = neighbour._data_processor.formatters.get(name)
        assert (ours is None) == (theirs is None)
        if ours is not None:
            assert {k: str(v) for k, v in vars(ours).items()} == \
                {k: str(v) for k, v in vars(theirs).items()}
    formatter = synth._data_processor.formatters["score"]
    assert (formatter._min_value, formatter._max_value) == (0, 100)  # declared, not 987654
    faker = transformers["id"]
    assert faker.function_kwargs == neighbour._data_processor._hyper_transformer.get_config()[
        "transformers"]["id"].function_kwargs


def test_conditions_fall_back_to_reject_sampling(fitted):
    from sdv.sampling import Condition

    synth, _ = fitted
    out = _table(synth.sample_from_conditions([Condition({"city": "Lyon"}, num_rows=40),
                                               Condition({"flag": True}, num_rows=10)]))
    assert len(out) == 50
    assert (out["city"].iloc[:40] == "Lyon").all() and out["flag"].iloc[40:].all()
    known = pd.DataFrame({"city": ["Nice"] * 15})
    rest = _table(synth.sample_remaining_columns(known))
    assert len(rest) == 15 and (rest["city"] == "Nice").all()
    assert rest["age"].between(18, 90).all()


def test_sampling_is_seeded_as_in_sdv(fitted):
    synth, _ = fitted
    synth.reset_sampling()
    first = _table(synth.sample(50))
    second = _table(synth.sample(50))
    synth.reset_sampling()
    again = _table(synth.sample(50))
    pd.testing.assert_frame_equal(first.drop(columns="id"), again.drop(columns="id"))
    assert not first.drop(columns="id").equals(second.drop(columns="id"))


def test_save_and_load_synthesizer_keep_no_per_row_training_state(fitted, tmp_path):
    from sdv.utils import load_synthesizer

    synth, _ = fitted
    path = tmp_path / "synth.pkl"
    synth.save(str(path))
    loaded = load_synthesizer(str(path))
    assert isinstance(loaded, DPFlowSDVSynthesizer)
    assert loaded.get_parameters() == synth.get_parameters()
    assert loaded.privacy_report() == synth.privacy_report()
    synth.reset_sampling()
    loaded.reset_sampling()
    pd.testing.assert_frame_equal(_table(loaded.sample(100)).drop(columns="id"),
                                  _table(synth.sample(100)).drop(columns="id"))
    for model in (loaded._model, pickle.loads(pickle.dumps(synth))._model):
        for p in model.flow_.parameters():
            assert p.grad is None
            for attr in ("grad_sample", "_norm_sample", "summed_grad", "_forward_counter"):
                assert not hasattr(p, attr)


def test_sdv_quality_report_runs_on_the_output(fitted):
    synth, df = fitted
    md = synth.get_metadata()
    fake = _table(synth.sample(len(df)))
    real = df.drop(index=0)
    if SDV_MAJOR >= 2:
        from sdv.evaluation import evaluate_quality

        report = evaluate_quality({TABLE: real}, {TABLE: fake}, md, verbose=False)
    else:
        from sdv.evaluation.single_table import evaluate_quality

        report = evaluate_quality(real, fake, md, verbose=False)
    assert 0.5 < report.get_score() <= 1.0


def test_what_would_learn_from_private_rows_is_refused(fitted):
    synth, df = fitted
    if SDV_MAJOR >= 2:
        from sdv.cag import FixedCombinations

        with pytest.raises(NotImplementedError, match="from the private rows"):
            synth.add_constraints([FixedCombinations(["city", "flag"])])
    with pytest.raises(NotImplementedError, match="transformers"):
        synth.update_transformers({"age": None})
    with pytest.raises(NotImplementedError, match="skeleton"):
        synth.auto_assign_transformers(_wrap(df))


def test_domain_argument_must_name_modelled_columns():
    md, _ = _metadata()
    synth = DPFlowSDVSynthesizer(md, **FAST, domain={"nope": {"type": "boolean"}})
    with pytest.raises(ValueError, match="nope"):
        synth.fit(_wrap(_frame(sentinels=False)))


# ------------------------------------------------------- logs and error messages (issue 9)
N_ROWS = 1237
_LOG_NOISE = re.compile(r"datetime\.datetime\([^)]*\)|'SYNTHESIZER ID': '[^']*'")


def _every_record(monkeypatch) -> list[logging.LogRecord]:
    """Records any logger handles, even one that does not propagate to caplog's handler."""
    records: list[logging.LogRecord] = []
    handle = logging.Logger.handle

    def recording(self, record):  # noqa: ANN001, ANN202
        records.append(record)
        return handle(self, record)

    monkeypatch.setattr(logging.Logger, "handle", recording)
    return records


def test_fit_and_sample_log_neither_the_row_count_nor_private_values(caplog, monkeypatch):
    """SDV logs 'TOTAL NUMBER OF ROWS': len(data) at INFO during fit: silenced."""
    caplog.set_level(logging.DEBUG)
    records = _every_record(monkeypatch)
    before = {name: logging.getLogger(name).level for name in SDV_LOGGER_NAMES}
    synth = _fit(_frame(n=N_ROWS))
    synth.sample(50)
    assert {name: logging.getLogger(name).level for name in SDV_LOGGER_NAMES} == before
    # Timestamps and random ids are no data, and could hold the digits by chance.
    messages = [_LOG_NOISE.sub("", r.getMessage()) for r in [*records, *caplog.records]]
    for secret in (str(N_ROWS), f"{N_ROWS:,}", SENTINEL_NAME, "987654", "123456789"):
        assert not [m for m in messages if secret in m], secret


def test_sdv_logs_are_restored_after_an_error():
    sdv_logger = logging.getLogger("sdv")
    previous = sdv_logger.level
    sdv_logger.setLevel(logging.INFO)
    try:
        with pytest.raises(RuntimeError), sdv_logs_silenced():
            assert not logging.getLogger("SingleTableSynthesizer").isEnabledFor(logging.CRITICAL)
            assert not sdv_logger.isEnabledFor(logging.CRITICAL)
            raise RuntimeError
        assert sdv_logger.level == logging.INFO
    finally:
        sdv_logger.setLevel(previous)


def _fit_error(df: pd.DataFrame, md: Metadata | None = None) -> InvalidDataError:
    synth = DPFlowSDVSynthesizer(md or _metadata()[0], **FAST, **_metadata()[1])
    with pytest.raises(InvalidDataError) as info, warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        synth.fit(_wrap(df))
    error = info.value
    # Nothing that holds SDV's original message is chained to it.
    assert error.__cause__ is None and error.__context__ is None
    return error


def test_validation_errors_name_the_column_but_quote_no_value():
    """SDV quotes offending values: a duplicated key, a string in a numerical column."""
    df = _frame(sentinels=False)
    df["score"] = df["score"].astype(object)
    df.loc[3, "score"] = "SENTINEL-dtype-91"
    df.loc[[5, 6], "id"] = 424242
    message = str(_fit_error(df))
    assert "'id'" in message and "repeating values" in message
    assert "'score'" in message and "Invalid values" in message
    assert "SENTINEL-dtype-91" not in message and "424242" not in message


def test_unparsable_datetimes_are_reported_without_the_value():
    df = _frame(sentinels=False).astype({"when": str})
    df.loc[7, "when"] = "SENTINEL-when-55"
    message = str(_fit_error(df))  # SDV's check (it samples 1,000 rows at most)
    assert "'when'" in message and "SENTINEL-when-55" not in message
    # Past SDV's sample, pandas' own parse error would quote it: withheld too.
    synth = DPFlowSDVSynthesizer(_metadata()[0], **FAST, **_metadata()[1])
    with pytest.raises(InvalidDataError) as info:
        synth._to_model_space(df[["when"]])
    assert "'when'" in str(info.value) and "SENTINEL-when-55" not in str(info.value)
    if SDV_MAJOR >= 2:  # a declared datetime_format: SDV checks every value
        md = _metadata()[0]
        md.update_column("when", table_name=TABLE, datetime_format="%Y-%m-%d")
        message = str(_fit_error(df, md))
        assert "'when'" in message and "SENTINEL-when-55" not in message


def test_value_free_errors_keep_the_problem_and_drop_the_values():
    errors = ["Errors in people:\nError: Key column 'id' contains repeating values: "
              "[424242]\nError: Invalid values found for numerical column 'score': "
              "['x:SECRET']",
              "Relationships:\nError: foreign key column 'fk' contains unknown references:\n"
              "   fk\n0  SECRET\nPlease use the method 'drop_unknown_references'",
              "The columns ['extra'] are not present in the metadata."]
    out = value_free_errors(errors, ["id", "score", "fk", "extra"])
    assert out[:3] == [
        f"Key column 'id' contains repeating values {WITHHELD}.",
        f"Invalid values found for numerical column 'score' {WITHHELD}.",
        f"foreign key column 'fk' contains unknown references {WITHHELD}.",
    ]
    assert out[3] == "The columns ['extra'] are not present in the metadata."
    assert not any("SECRET" in line or "424242" in line for line in out)
    assert value_free_errors(["could not convert 'SECRET'"], ["id"])[0].startswith("The table")


@pytest.mark.skipif(SDV_MAJOR < 2, reason="sdv.cag is SDV 2.x")
def test_sdv_constraints_that_mean_a_public_rule_are_enforced_on_every_row():
    from sdv.cag import Inequality, OneHotEncoding, Range

    from skdpflow import FixedCombinations
    from skdpflow import Inequality as Ours

    df = _frame(sentinels=False)
    rng = np.random.default_rng(1)
    hot = rng.integers(0, 3, len(df))
    for i, name in enumerate(["is_a", "is_b", "is_c"]):
        df[name] = hot == i
    md, kw = _metadata()
    for name in ("is_a", "is_b", "is_c"):
        md.add_column(name, table_name=TABLE, sdtype="boolean")
    synth = DPFlowSDVSynthesizer(md, **FAST, **kw)
    synth.add_constraints([Inequality("age", "score"), Range("age", "score", "income"),
                           OneHotEncoding(["is_a", "is_b", "is_c"])])
    assert synth._rules == [
        Ours("age", "score"), Ours("age", "score", strict=True),
        Ours("score", "income", strict=True),
        FixedCombinations(["is_a", "is_b", "is_c"], [(True, False, False),
                                                     (False, True, False),
                                                     (False, False, True)])]
    assert len(synth.get_constraints()) == 3
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        synth.fit(_wrap(df))
    fake = _table(synth.sample(600))
    for rule in synth._rules:
        assert rule.satisfied(fake).all(), rule
    assert synth._model.domain_.constraints == synth._rules


@pytest.mark.skipif(SDV_MAJOR < 2, reason="sdv.cag is SDV 2.x")
def test_sdv_constraints_learned_from_the_rows_are_refused_saying_what_to_declare():
    from sdv.cag import FixedCombinations, FixedIncrements, Inequality, ProgrammableConstraint

    md, kw = _metadata()
    synth = DPFlowSDVSynthesizer(md, **FAST, **kw)
    with pytest.raises(NotImplementedError, match=r"from the private rows.*FixedCombinations"):
        synth.add_constraints([FixedCombinations(["city", "flag"])])
    with pytest.raises(NotImplementedError, match="integer: true"):
        synth.add_constraints([FixedIncrements("age", 1)])
    with pytest.raises(NotImplementedError, match="multiples of 5"):
        synth.add_constraints([FixedIncrements("age", 5)])
    with pytest.raises(NotImplementedError, match="programmable"):
        synth.add_constraints([ProgrammableConstraint()])
    with pytest.raises(ValueError, match="without a public domain"):  # estimated under DP
        synth.add_constraints([Inequality("age", "balance")])
    with pytest.raises(ValueError, match="cannot all hold together"):
        synth.add_constraints([Inequality("income", "age", strict_boundaries=True),
                               Inequality("age", "income", strict_boundaries=True)])
    assert synth._rules == [] and synth.get_constraints() == []  # nothing added
