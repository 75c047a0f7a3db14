"""The attacker of the threat model: holds the model file, every sample and every log line,
knows the code and every row but one, and guesses any seed a person would type. Each test asks
whether that attacker can tell D from D plus one row."""

from __future__ import annotations

import json
import math
import struct
import warnings

import numpy as np
import pandas as pd
import pytest
import torch

from skdpflow import DPFlowSynthesizer, Domain
from skdpflow.cli import main
from skdpflow.marginals import histogram_spec
from skdpflow.privacy.copula import cell_reliability, row_bound
from skdpflow.synthesizer import _from_state

FAST = {"epochs": 1, "batch_size": 64, "n_stages": 3, "hidden_size": 16, "verbose": False}
SEED = 1_234_567  # a seed a person would type, and easy to find in bytes


def _neighbours(frame: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    extra = pd.DataFrame({"age": [77], "income": [123_456], "score": [3.5], "city": ["Lille"],
                          "flag": [True], "when": [pd.Timestamp("2021-03-04")]})
    return frame, pd.concat([frame, extra], ignore_index=True)


def _saved_state(synth: DPFlowSynthesizer, path) -> dict:
    synth.save(path)
    return torch.load(path, weights_only=True)


def _walk(state, prefix=""):
    """Every (key path, value) of a nested state."""
    if isinstance(state, dict):
        for key, value in state.items():
            yield from _walk(value, f"{prefix}/{key}")
    elif isinstance(state, (list, tuple)):
        for i, value in enumerate(state):
            yield from _walk(value, f"{prefix}/{i}")
    else:
        yield prefix, state


def _copula_bound(state: dict, copula_only: bool) -> tuple[int, float]:
    """The copula's dimension count and row bound, rebuilt from a saved state's released
    marginals alone: ``B = D``, or for the copula-only model the bound of the cell
    reliabilities of the encoder built from them."""
    encoder = _from_state(DPFlowSynthesizer, state).encoder_
    if not copula_only:
        return encoder.n_dims, float(encoder.n_dims)
    reliability = cell_reliability(lambda z: encoder.cells(encoder.decode(z))[:2],
                                   encoder.n_dims)
    return encoder.n_dims, row_bound(reliability)


def test_nothing_seed_like_is_stored(tmp_path, mixed_frame, mixed_domain):
    synth = DPFlowSynthesizer(epsilon=1.0, delta=1e-4, random_state=SEED, **FAST)
    synth.fit(mixed_frame, domain=mixed_domain)
    state = _saved_state(synth, tmp_path / "m.skdpflow")
    for path, value in _walk(state):
        name = path.rsplit("/", 1)[-1]
        assert "random_state" not in path, path
        if name == "seed":
            assert value == 0, path  # the flow's masks travel in its weights instead
        if not isinstance(value, torch.Tensor):
            assert value != SEED, path
    blob = (tmp_path / "m.skdpflow").read_bytes()
    for pattern in (str(SEED).encode(), struct.pack("<q", SEED), struct.pack("<i", SEED)):
        assert pattern not in blob


def test_the_seed_in_file_attack_no_longer_tells_neighbours_apart(tmp_path, mixed_frame,
                                                                   mixed_domain):
    """The attack of the issue: refit D and D' with the file's parameters and every seed the
    attacker can guess; before, exactly one refit reproduced the file's noisy marginals."""
    d, d_plus = _neighbours(mixed_frame)
    published = DPFlowSynthesizer(epsilon=1.0, delta=1e-4, random_state=SEED, **FAST)
    published.fit(d_plus, domain=mixed_domain)
    state = _saved_state(published, tmp_path / "m.skdpflow")
    assert "random_state" not in state["params"]
    target = [m.numpy() for m in state["marginals"]]
    for guess in (SEED, 0, 42):
        for candidate in (d, d_plus):
            refit = DPFlowSynthesizer(**state["params"], random_state=guess)
            refit.fit(candidate, domain=mixed_domain)
            same = all(np.array_equal(m.probs, t) for m, t in zip(refit.marginals_, target))
            assert not same, (guess, len(candidate))


@pytest.mark.parametrize("model", ["trained", "copula_only"])
def test_one_added_row_changes_no_stored_non_dp_field(tmp_path, mixed_frame, mixed_domain,
                                                      model):
    """The whole saved state, field by field, except the released noisy arrays, the flow
    weights and what is computed from the noisy row count. ``copula_only``: the schedule
    skips DP-SGD and the model is the copula (its sharper estimate, the variance matching
    and the post-processing after it)."""
    d, d_plus = _neighbours(mixed_frame)
    states = []
    for i, frame in enumerate((d, d_plus)):
        if model == "trained":
            synth = DPFlowSynthesizer(epsilon=1.0, delta=1e-4, random_state=0, **FAST)
        else:
            synth = DPFlowSynthesizer(epsilon=0.2, delta=1e-4, random_state=0, verbose=False)
        synth.fit(frame, domain=mixed_domain)
        assert (synth.steps_ == 0) == (model == "copula_only")
        states.append(_saved_state(synth, tmp_path / f"{i}.skdpflow"))
    a, b = states
    assert set(a) == set(b)
    noisy = {"marginals", "flow", "fitted", "marginals_info", "ledger"}
    for key in set(a) - noisy:
        assert a[key] == b[key], key
    assert a["marginals_info"].keys() == b["marginals_info"].keys()
    for key in ("histograms", "l2_sensitivity", "noise_std"):
        assert a["marginals_info"][key] == b["marginals_info"][key], key
    # The histograms' bins follow the noisy row count and the noise (the schedule's
    # histogram_bins and unit_bins): each state's released arrays have exactly the shapes
    # of the bins its own schedule gives the declared domain.
    for state in (a, b):
        plan = state["fitted"]["schedule_"]
        domain = Domain.from_dict(state["domain"])
        sizes = [histogram_spec(name, domain[name], plan["histogram_bins"],
                                plan["unit_bins"]).size for name in domain.columns]
        assert [tuple(m.shape) for m in state["marginals"]] == [(k,) for k in sizes]
        assert state["marginals_info"]["bins"] == sum(sizes)
    la, lb = a["ledger"], b["ledger"]
    for key in ("epsilon", "delta", "selection_delta", "order"):
        assert la[key] == lb[key], key
    # The releases' public parts; the shares of the histograms, copula and DP-SGD, and
    # DP-SGD's rate and steps, follow the noisy row count (post-processing of a release).
    # The copula's dimensions D (so its ``reads``) and its row bound B (so its sensitivity
    # B / sqrt(2): B = D, or the copula-only model's bound from the cells' reliabilities)
    # follow the encoder built from the noisy marginals (a numerical value gets a mode of
    # its own where its released mass reaches ATOM_THRESHOLD): checked against each
    # model's own released marginals instead of across the neighbours.
    for ra, rb in zip(la["releases"], lb["releases"], strict=True):
        assert ra["name"] == rb["name"]
        assert ra["columns"] == rb["columns"]
        if ra["name"].startswith("copula"):
            for release, model_state in ((ra, a), (rb, b)):
                dims, bound = _copula_bound(model_state, model == "copula_only")
                assert model_state["fitted"]["copula_info_"]["dims"] == dims
                assert f"of {dims} clipped latent" in release["reads"]
                assert release["l2_sensitivity"] == pytest.approx(bound / math.sqrt(2))
                assert release["details"]["row_bound"] == pytest.approx(bound)
                if model == "copula_only":  # the cell means' norm, under D
                    assert bound < dims
        elif ra["name"].startswith("1-way histograms"):  # its bins: each state's own
            assert ra["l2_sensitivity"] == rb["l2_sensitivity"]
            for release, model_state in ((ra, a), (rb, b)):
                info = model_state["marginals_info"]
                assert release["reads"] == (f"bin counts of {info['histograms']} columns, "
                                            f"{info['bins']} bins")
        else:
            for key in ("reads", "l2_sensitivity"):
                assert ra[key] == rb[key], key
    assert la["releases"][0] == lb["releases"][0]  # the row-count release: all public
    assert [m.dtype for m in a["marginals"]] == [m.dtype for m in b["marginals"]]


def test_fit_leaves_torch_and_numpy_global_random_state_alone(mixed_frame, mixed_domain):
    torch_state, numpy_state = torch.get_rng_state(), np.random.get_state()
    DPFlowSynthesizer(epsilon=1.0, delta=1e-4, random_state=3, **FAST).fit(
        mixed_frame, domain=mixed_domain)
    assert torch.equal(torch.get_rng_state(), torch_state)
    assert all(np.array_equal(x, y) for x, y in zip(np.random.get_state(), numpy_state)
               if isinstance(x, np.ndarray))


def test_global_seeds_do_not_make_private_fits_repeat(mixed_frame, mixed_domain):
    fits = []
    for _ in range(2):
        np.random.seed(0)
        torch.manual_seed(0)
        fits.append(DPFlowSynthesizer(epsilon=1.0, delta=1e-4, **FAST).fit(
            mixed_frame, domain=mixed_domain))
    # the categories' histograms (their bins are the declared categories; a numerical
    # column's follow the noisy row count)
    counts = [np.concatenate([m.noisy_counts for m in f.marginals_
                              if m.spec.kind == "discrete"]) for f in fits]
    assert len(counts[0]) >= 4
    assert np.mean(counts[0] != counts[1]) > 0.5


def test_a_large_epsilon_with_category_discovery_fits_without_overflow(mixed_frame):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        synth = DPFlowSynthesizer(epsilon=500.0, delta=1e-4, random_state=0, **FAST)
        synth.fit(mixed_frame)  # city is undeclared: discovery's e^eps term
    assert math.isfinite(synth.delta_) and synth.delta_ <= 1e-4
    with pytest.raises(ValueError, match="'epsilon' parameter"):
        DPFlowSynthesizer(epsilon=1000.0, **FAST).fit(mixed_frame)


# ----------------------------------------------------------------------------- CLI
def _cli_fit(tmp_path, name, *extra):
    data = tmp_path / "data.csv"
    model = tmp_path / name
    code = main(["fit", str(data), "--epsilon", "2", "--delta", "1e-4", "--epochs", "1",
                 "--batch-size", "64", "--domain", str(tmp_path / "domain.json"),
                 "-o", str(model), *extra])
    assert code == 0
    return torch.load(model, weights_only=True)


def test_cli_fits_with_the_same_seed_draw_different_noise(tmp_path, mixed_frame, mixed_domain):
    mixed_frame.to_csv(tmp_path / "data.csv", index=False)
    (tmp_path / "domain.json").write_text(json.dumps(mixed_domain))
    a = _cli_fit(tmp_path, "a.skdpflow", "--seed", "0", "--quiet")
    b = _cli_fit(tmp_path, "b.skdpflow", "--seed", "0", "--quiet")
    assert not all(torch.equal(x, y) for x, y in zip(a["marginals"], b["marginals"]))
    assert "random_state" not in a["params"]


def test_cli_progress_shows_epsilon_and_no_loss_by_default(tmp_path, mixed_frame, mixed_domain,
                                                           capsys):
    mixed_frame.to_csv(tmp_path / "data.csv", index=False)
    (tmp_path / "domain.json").write_text(json.dumps(mixed_domain))
    capsys.readouterr()
    _cli_fit(tmp_path, "m.skdpflow")
    out = capsys.readouterr()
    assert "eps=" in out.err
    assert "loss" not in (out.out + out.err).lower()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_a_tiny_fit_runs_on_cuda(mixed_frame, mixed_domain):
    synth = DPFlowSynthesizer(epsilon=1.0, delta=1e-4, device="cuda", random_state=0, **FAST)
    synth.fit(mixed_frame, domain=mixed_domain)
    assert synth.epsilon_ <= 1.0
    assert len(synth.sample(100)) == 100
    assert next(synth.flow_.parameters()).device.type == "cpu"  # the fitted model lives on CPU
