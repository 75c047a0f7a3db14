"""skdpflow: differentially private synthetic tables from a shared-conditioner spline flow.

>>> from skdpflow import DPFlowSynthesizer, load_demo
>>> synth = DPFlowSynthesizer(epsilon=1.0, random_state=0).fit(load_demo())  # doctest: +SKIP
>>> fake = synth.sample(1000)  # doctest: +SKIP
"""

from ._io import ModelFileError, OutputPathError
from ._validation import InvalidDataError, NotFittedError
from .datasets import load_demo, load_demo_domain
from .domain import ColumnDomain, DataDerivedDomainWarning, Domain
from .evaluation import EvaluationResult, evaluate
from .privacy.accounting import PrivacyBudgetError
from .privacy.domain_estimation import (
    DomainEstimateError,
    DomainEstimateWarning,
    OtherShareWarning,
)
from .synthesizer import DPFlowSynthesizer

__version__ = "0.1.0"

__all__ = [
    "DPFlowSynthesizer",
    "Domain",
    "ColumnDomain",
    "DataDerivedDomainWarning",
    "DomainEstimateError",
    "DomainEstimateWarning",
    "EvaluationResult",
    "InvalidDataError",
    "ModelFileError",
    "NotFittedError",
    "OtherShareWarning",
    "OutputPathError",
    "PrivacyBudgetError",
    "evaluate",
    "load_demo",
    "load_demo_domain",
]
