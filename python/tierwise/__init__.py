"""tierwise: route each LLM request to the cheapest model that answers it well enough."""

from ._core import (
    Featurizer,
    count_message_tokens,
    count_tokens,
    count_tokens_till_limit,
    estimate_tokens,
)
from ._core import __version__ as __version__
from .errors import (
    AllAttemptsFailedError,
    AuthError,
    BadRequestError,
    ConfigError,
    ContextLengthError,
    DatasetError,
    InputError,
    NoRouteError,
    ProviderError,
    RetryableError,
    TierwiseError,
    TokenizerError,
    UnknownModelError,
    UnpricedModelError,
)
from .policy import Constraints, Policy, Rule
from .predict import ModelParams, QualityModel
from .registry import Deployment, ModelSpec, Price, Registry
from .router import Candidate, Decision, Router

__all__ = [
    "AllAttemptsFailedError",
    "AuthError",
    "BadRequestError",
    "Candidate",
    "ConfigError",
    "Constraints",
    "ContextLengthError",
    "DatasetError",
    "Decision",
    "Deployment",
    "Featurizer",
    "InputError",
    "ModelParams",
    "ModelSpec",
    "NoRouteError",
    "Policy",
    "Price",
    "ProviderError",
    "QualityModel",
    "Registry",
    "RetryableError",
    "Router",
    "Rule",
    "TierwiseError",
    "TokenizerError",
    "UnknownModelError",
    "UnpricedModelError",
    "count_message_tokens",
    "count_tokens",
    "count_tokens_till_limit",
    "estimate_tokens",
]
