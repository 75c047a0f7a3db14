"""The bundled demo table (UCI Adult, CC BY 4.0) and its public domain."""

from __future__ import annotations

import json
from importlib import resources

import pandas as pd

from .domain import Domain

__all__ = ["load_demo", "load_demo_domain"]

CITATION = (
    "Becker, B. & Kohavi, R. (1996). Adult [Dataset]. UCI Machine Learning Repository. "
    "https://doi.org/10.24432/C5XW20 (CC BY 4.0)"
)


def load_demo() -> pd.DataFrame:
    """The UCI Adult training split: 32,561 rows, 15 mixed-type columns, missing values.

    Source: {citation}
    """
    with resources.files("skdpflow.data").joinpath("adult.csv.gz").open("rb") as fh:
        return pd.read_csv(fh, compression="gzip")


def load_demo_domain() -> Domain:
    """A public domain for :func:`load_demo` (census bounds, documented categories)."""
    text = resources.files("skdpflow.data").joinpath("adult_domain.json").read_text()
    return Domain.from_dict(json.loads(text))


load_demo.__doc__ = load_demo.__doc__.format(citation=CITATION)
