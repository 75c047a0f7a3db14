"""The bundled demo table (UCI Adult, CC BY 4.0) and its public domain."""

from __future__ import annotations

import json
from importlib import resources

import pandas as pd

from .domain import Domain

__all__ = ["load_demo", "load_demo_domain", "load_demo_rules"]

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


def load_demo_rules() -> list:
    """Public rules between the demo table's columns (see :mod:`skdpflow.constraints`).

    ``education-num`` is a function of ``education`` (the census code, 1 = Preschool ...
    16 = Doctorate); ``relationship = Husband`` implies ``sex = Male``; and it implies
    ``marital-status`` in ``Married-civ-spouse`` / ``Married-AF-spouse``. Facts of the
    coding, not read from the rows (which keep them, but for one row recording a female
    husband).

    Returns
    -------
    list of Rule
    """
    from .constraints import as_rules

    text = resources.files("skdpflow.data").joinpath("adult_rules.json").read_text()
    return as_rules(json.loads(text))


load_demo.__doc__ = load_demo.__doc__.format(citation=CITATION)
