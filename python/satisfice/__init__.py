"""satisfice: route each LLM request to the cheapest model that answers it well enough.

Modules that need numpy (registry, policy, predictor, router) load on first use, so
`import satisfice` stays fast for CLIs and for services that only count tokens.
"""

from __future__ import annotations

import importlib

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
    CascadeBudgetError,
    ConfigError,
    ContextLengthError,
    DatasetError,
    InputError,
    NoRouteError,
    ProviderError,
    RetryableError,
    SatisficeError,
    StreamInterruptedError,
    TokenizerError,
    UnknownModelError,
    UnpricedModelError,
    UnsupportedRequestError,
    UpstreamTimeoutError,
)

TYPE_CHECKING = False  # not typing's: Router() does not import typing (cold_start.py)
if TYPE_CHECKING:
    from typing import Any

    from ._options import RequestOptions
    from .cascade import Cascade, CascadeResult, ModelEstimate, Step, StepRecord
    from .decision import Candidate, Decision, Snapshot
    from .executor import ChatStream, ExecutionConfig
    from .policy import Constraints, Policy, Rule
    from .predict import ModelParams, QualityModel
    from .providers.base import StreamDelta, ToolCall, Usage
    from .registry import Deployment, ModelSpec, Price, Registry
    from .result import Attempt, ChatResult
    from .router import Router
    from .state import Health, HealthConfig
    from .validators import Answer, Context, Validator, Verdict
    from .workflow import Job, JobStep

_LAZY = {
    "Answer": "validators",
    "Context": "validators",
    "Validator": "validators",
    "Verdict": "validators",
    "Cascade": "cascade",
    "CascadeResult": "cascade",
    "ModelEstimate": "cascade",
    "Step": "cascade",
    "StepRecord": "cascade",
    "ChatStream": "executor",
    "ExecutionConfig": "executor",
    "Job": "workflow",
    "JobStep": "workflow",
    "StreamDelta": "providers.base",
    "ToolCall": "providers.base",
    "Usage": "providers.base",
    "RequestOptions": "_options",
    "Snapshot": "decision",
    "Attempt": "result",
    "ChatResult": "result",
    "Health": "state",
    "HealthConfig": "state",
    "Constraints": "policy",
    "Policy": "policy",
    "Rule": "policy",
    "ModelParams": "predict",
    "QualityModel": "predict",
    "Deployment": "registry",
    "ModelSpec": "registry",
    "Price": "registry",
    "Registry": "registry",
    "Candidate": "decision",
    "Decision": "decision",
    "Router": "router",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'satisfice' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    "AllAttemptsFailedError",
    "Answer",
    "Attempt",
    "AuthError",
    "BadRequestError",
    "Candidate",
    "Cascade",
    "CascadeBudgetError",
    "CascadeResult",
    "ChatResult",
    "ChatStream",
    "ConfigError",
    "Constraints",
    "Context",
    "ContextLengthError",
    "DatasetError",
    "Decision",
    "Deployment",
    "ExecutionConfig",
    "Featurizer",
    "Health",
    "HealthConfig",
    "InputError",
    "Job",
    "JobStep",
    "ModelEstimate",
    "ModelParams",
    "ModelSpec",
    "NoRouteError",
    "Policy",
    "Price",
    "ProviderError",
    "QualityModel",
    "Registry",
    "RequestOptions",
    "RetryableError",
    "Router",
    "Rule",
    "SatisficeError",
    "Snapshot",
    "Step",
    "StepRecord",
    "StreamDelta",
    "StreamInterruptedError",
    "TokenizerError",
    "ToolCall",
    "UnknownModelError",
    "UnpricedModelError",
    "UnsupportedRequestError",
    "UpstreamTimeoutError",
    "Usage",
    "Validator",
    "Verdict",
    "count_message_tokens",
    "count_tokens",
    "count_tokens_till_limit",
    "estimate_tokens",
]
