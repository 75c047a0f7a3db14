"""skdpflow: differentially private synthetic tables from a shared-conditioner spline flow.

>>> from skdpflow import DPFlowSynthesizer, load_demo
>>> synth = DPFlowSynthesizer(epsilon=1.0, random_state=0).fit(load_demo())  # doctest: +SKIP
>>> fake = synth.sample(1000)  # doctest: +SKIP
"""

from ._io import ModelFileError, OutputPathError
from ._validation import InvalidDataError, NotFittedError
from .constraints import FixedCombinations, FunctionOf, Implication, Inequality, Rule, ValueRange
from .datasets import load_demo, load_demo_domain, load_demo_rules
from .domain import ColumnDomain, DataDerivedDomainWarning, Domain
from .enforcement import RuleConflictError
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
    "FixedCombinations",
    "FunctionOf",
    "Implication",
    "Inequality",
    "InvalidDataError",
    "ModelFileError",
    "NotFittedError",
    "OtherShareWarning",
    "OutputPathError",
    "PrivacyBudgetError",
    "Rule",
    "RuleConflictError",
    "ValueRange",
    "evaluate",
    "load_demo",
    "load_demo_domain",
    "load_demo_rules",
]
