"""Column transforms: inverse(forward(x)) = x, log_derivative = log dt/dx, chosen by the domain."""

from __future__ import annotations

import numpy as np
import pytest

from skdpflow.domain import ColumnDomain
from skdpflow.transforms import (
    AsinhTransform,
    IdentityTransform,
    ShiftedLogTransform,
    column_transform,
)


@pytest.mark.parametrize("transform", [IdentityTransform(), ShiftedLogTransform(-3.0),
                                       AsinhTransform()],
                         ids=["identity", "shifted-log", "asinh"])
def test_inverse_and_log_derivative(transform):
    x = np.linspace(-3.0, 5e4, 101)
    np.testing.assert_allclose(transform.inverse(transform.forward(x)), x, rtol=1e-12,
                               atol=1e-9)
    step = 1e-6 * np.maximum(1.0, np.abs(x))
    slope = (transform.forward(x + step) - transform.forward(x - step)) / (2 * step)
    np.testing.assert_allclose(transform.log_derivative(x), np.log(slope), atol=1e-6)


def test_the_public_domain_chooses_the_transform():
    heavy = ColumnDomain(type="numerical", min=0, max=1e6)
    narrow = ColumnDomain(type="numerical", min=0, max=10)
    assert column_transform(heavy) == ShiftedLogTransform(0.0)
    assert isinstance(column_transform(narrow), IdentityTransform)
    assert isinstance(column_transform(ColumnDomain(type="numerical", min=0, max=10,
                                                    transform="log")), ShiftedLogTransform)
    signed = ColumnDomain(type="numerical", min=-2e5, max=1e6)
    assert isinstance(column_transform(signed), AsinhTransform)
    assert isinstance(column_transform(ColumnDomain(type="numerical", min=-5, max=5)),
                      IdentityTransform)
    assert isinstance(column_transform(ColumnDomain(type="numerical", min=-2e5, max=1e6,
                                                    transform="none")), IdentityTransform)
