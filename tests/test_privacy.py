"""Privacy properties that hold with a declared domain: neighbours, sentinels, domains."""

from __future__ import annotations

import json
import pickle
import struct

import numpy as np
import pandas as pd
import pytest

from skdpflow import DPFlowSynthesizer, Domain, InvalidDataError
from skdpflow.marginals import histogram_spec

FAST = dict(epochs=1, batch_size=64, n_stages=3, hidden_size=16, verbose=False)


def _fit(frame, domain, seed=0, epsilon=1.0):
    return DPFlowSynthesizer(epsilon=epsilon, delta=1e-4, random_state=seed, **FAST).fit(
        frame, domain=domain)


def _count_difference(frame, neighbour, domain):
    """Exact (noiseless, epsilon=inf) histogram counts of the neighbours, subtracted."""
    a, b = _fit(frame, domain, epsilon=np.inf), _fit(neighbour, domain, epsilon=np.inf)
    diff = np.concatenate([mb.noisy_counts - ma.noisy_counts
                           for ma, mb in zip(a.marginals_, b.marginals_)])
    return a, b, diff


def test_neighbouring_datasets_differ_only_through_the_noisy_histograms(mixed_frame,
                                                                         mixed_domain):
    extra = pd.DataFrame({"age": [500], "income": [0], "score": [np.nan], "city": ["Lille"],
                          "flag": [True], "when": [pd.Timestamp("2021-06-01")]})
    neighbour = pd.concat([mixed_frame, extra], ignore_index=True)
    assert "Lille" not in set(mixed_frame["city"])  # declared but never seen
    a, b = _fit(mixed_frame, mixed_domain), _fit(neighbour, mixed_domain)
    # Everything that is not the output of an accounted mechanism is identical.
    assert a.domain_.to_dict() == b.domain_.to_dict()
    assert _transformer_state(a) == _transformer_state(b)
    # The bins: the declared domain's, at the schedule's bin counts (which follow the noisy
    # row count and the noise, nothing else: tests/test_schedule.py).
    for fit in (a, b):
        plan = fit.schedule_
        for name, m in zip(fit.domain_.columns, fit.marginals_):
            spec = histogram_spec(name, fit.domain_[name], plan.histogram_bins,
                                  plan.unit_bins)
            assert {k: pickle.dumps(v) for k, v in vars(m.spec).items()} == \
                {k: pickle.dumps(v) for k, v in vars(spec).items()}
    # The exact histograms differ by at most the sensitivity the noise is sized for.
    sensitivity = a.marginals_info_["l2_sensitivity"]
    _, _, diff = _count_difference(mixed_frame, neighbour, mixed_domain)
    assert 0 < np.linalg.norm(diff) <= sensitivity + 1e-9
    assert np.allclose(np.abs(diff).sum(), len(a.marginals_))  # one bin per histogram
    # The extreme value was clipped to the declared bound, never widening it.
    age = next(c for c in b.encoder_.codecs if c.name == "age")
    assert age.col.max == 90


def test_neighbour_with_a_never_declared_category_maps_it_to_other(mixed_frame, mixed_domain):
    mixed_domain["city"]["other"] = "Elsewhere"
    mixed_domain["age"]["nullable"] = True
    extra = pd.DataFrame({"age": [np.nan], "income": [10**9], "score": [-5.0],
                          "city": ["Atlantis"], "flag": [False],
                          "when": [pd.Timestamp("1850-01-01")]})
    neighbour = pd.concat([mixed_frame, extra], ignore_index=True)
    a, b = _fit(mixed_frame, mixed_domain), _fit(neighbour, mixed_domain)
    assert a.domain_.to_dict() == b.domain_.to_dict()
    assert a.domain_["city"].categories[-1] == "Elsewhere"
    assert _transformer_state(a) == _transformer_state(b)
    exact_a, exact_b, diff = _count_difference(mixed_frame, neighbour, mixed_domain)
    assert 0 < np.linalg.norm(diff) <= a.marginals_info_["l2_sensitivity"] + 1e-9
    city = next(i for i, m in enumerate(b.marginals_) if m.spec.name == "city")
    other = a.domain_["city"].categories.index("Elsewhere")
    assert np.argmax(np.abs(exact_b.marginals_[city].noisy_counts
                            - exact_a.marginals_[city].noisy_counts)) == other
    for fit in (a, b):
        assert "Atlantis" not in set(fit.sample(2000, random_state=0)["city"].dropna())


def _transformer_state(synth) -> dict:
    """Every attribute of every fitted RDT transformer, serialised (identity-free)."""
    hyper = synth.type_layer_.hyper
    state = {"hyper": {k: pickle.dumps(v) for k, v in vars(hyper).items()
                       if k != "field_transformers"}}
    for name, transformer in hyper.field_transformers.items():
        state[name] = {k: pickle.dumps(v) for k, v in vars(transformer).items()}
    return state


def _float_patterns(value: float) -> list[bytes]:
    return [repr(value).encode(), struct.pack("<d", value), struct.pack("<f", value)]


def test_a_planted_sentinel_never_reaches_the_model_file_or_samples(mixed_frame, mixed_domain,
                                                                      tmp_path):
    sentinel = 987654.25
    frame = mixed_frame.copy()
    frame.loc[7, "score"] = sentinel  # outside the declared [0, 100]
    synth = _fit(frame, mixed_domain)
    path = tmp_path / "model.skdpflow"
    synth.save(path)
    blob = path.read_bytes() + pickle.dumps(synth)
    for pattern in _float_patterns(sentinel):
        assert pattern not in blob
    fake = synth.sample(100_000, random_state=1)
    assert not (fake.select_dtypes("number") == sentinel).any().any()
    assert fake["score"].max() <= 100


def test_an_undeclared_category_is_refused_not_learned(mixed_frame, mixed_domain):
    frame = mixed_frame.copy()
    frame.loc[3, "city"] = "SENTINEL-City-7f3a"
    with pytest.raises(InvalidDataError, match="declared categories"):
        _fit(frame, mixed_domain)


def test_domain_from_sdv_metadata(mixed_frame):
    from sdv.metadata import Metadata

    md = Metadata()
    md.add_table("people")
    md.add_column("age", table_name="people", sdtype="numerical", range_min=18, range_max=90,
                  decimal_places=0)
    md.add_column("city", table_name="people", sdtype="categorical",
                  range_values=["Paris", "Lyon", "Nice", "Lille"], range_is_nullable=True)
    md.add_column("flag", table_name="people", sdtype="boolean")
    dom = Domain.from_sdv_metadata(md)
    assert dom["age"].integer and dom["age"].max == 90
    assert dom["city"].nullable and "Lille" in dom["city"].categories
    assert dom["flag"].type == "boolean"
    frame = mixed_frame[["age", "city", "flag"]]
    synth = _fit(frame, md)
    assert synth.privacy_report()["guarantee_covers_everything"]
    # A column the metadata leaves out (score) is estimated under DP, not read.
    report = _fit(mixed_frame[["age", "city", "flag", "score"]], md.to_dict()).privacy_report()
    assert report["domain"]["estimated_with_dp"] == ["score"]
    assert report["guarantee_covers_everything"]


def test_domain_from_yaml_and_json_files(mixed_frame, mixed_domain, tmp_path):
    import yaml

    (tmp_path / "d.yaml").write_text(yaml.safe_dump(mixed_domain))
    (tmp_path / "d.json").write_text(json.dumps(mixed_domain))
    assert Domain.load(tmp_path / "d.yaml").to_dict() == Domain.load(tmp_path / "d.json").to_dict()
    synth = _fit(mixed_frame, str(tmp_path / "d.yaml"))
    assert synth.privacy_report()["guarantee_covers_everything"]
