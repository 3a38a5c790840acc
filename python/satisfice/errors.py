"""The one exception tree of satisfice. Every error says what to do next.

    SatisficeError
    ├── ConfigError (ValueError)          bad registry / policy / constraints input
    │   └── UnknownModelError (KeyError)  a model id that is not in the registry
    ├── InputError (ValueError)           a malformed request (messages, text)
    ├── TokenizerError (ValueError)       unknown encoding or tokenizer family
    ├── DatasetError (ValueError)         outcome data that cannot be loaded
    ├── NoRouteError                      no model satisfies the constraints
    ├── UnpricedModelError                a cost was needed for a model with no price
    ├── CascadeBudgetError                no answer accepted inside the latency/cost budget
    ├── RouterClosedError                 a request to a router closed before or while it ran
    └── ProviderError                     an upstream call failed
        ├── RetryableError                429, 408, 5xx, connection errors
        │   └── UpstreamTimeoutError      no answer within the attempt's timeout
        ├── AuthError                     401/403: the deployment is disabled
        ├── ContextLengthError            the prompt did not fit the model's window
        ├── BadRequestError               400 that retrying will not fix
        │   └── UnsupportedRequestError   a model's wire cannot carry it: the next is tried
        ├── StreamInterruptedError        a stream broke after its first byte reached you
        └── AllAttemptsFailedError        every candidate failed; `.attempts` lists why

This module never imports satisfice._core: the Rust binding raises these classes.
"""

from __future__ import annotations

from ._redact import scrub

TYPE_CHECKING = False  # not typing's: Router() does not import typing (cold_start.py)
if TYPE_CHECKING:
    from collections.abc import Iterable
    from typing import Any

__all__ = [
    "AllAttemptsFailedError",
    "AuthError",
    "BadRequestError",
    "CascadeBudgetError",
    "ConfigError",
    "ContextLengthError",
    "DatasetError",
    "InputError",
    "NoRouteError",
    "ProviderError",
    "RegistryWarning",
    "RetryableError",
    "RouterClosedError",
    "SatisficeError",
    "StaleConnectionError",
    "StreamInterruptedError",
    "TokenizerError",
    "UnknownModelError",
    "UnpricedModelError",
    "UnsupportedRequestError",
    "UpstreamTimeoutError",
]


def quoted(v: object, width: int = 200) -> str:
    """`repr(v)` cut to `width` characters: what an error quotes of a caller's value (a
    megabyte-long model id had come back whole in its error, and into every log of it)."""
    r = repr(v)
    return r if len(r) <= width else r[: width - 3] + "..."


def quoted_names(names: Iterable[Any], most: int = 10, width: int = 60) -> str:
    """Sorted names as a list's repr (`['seed', 'top_k']`), each cut to `width` characters,
    at most `most` of them and how many more: 20,000 unknown parameter names had been
    quoted whole, a 1.2 MB error."""
    every = list(names)  # (once: a generator is read one time)
    if all(isinstance(n, str) for n in every):  # (names of mixed types: in the order given)
        every.sort()
    shown = [quoted(n, width) for n in every[:most]]
    if len(every) > most:
        shown.append(f"... {len(every) - most} more")
    return "[" + ", ".join(shown) + "]"


class RegistryWarning(UserWarning):
    """A registry loaded, but something in it needs attention: a model past or near its
    deprecation date, or prices older than the configured age."""


class SatisficeError(Exception):
    """Base class of every error satisfice raises on purpose."""


class ConfigError(SatisficeError, ValueError):
    """The registry, policy or constraints are invalid; the message names the field."""


class UnknownModelError(ConfigError, KeyError):
    """A model id that the registry does not know."""

    def __str__(self) -> str:  # KeyError would otherwise quote the message
        return str(self.args[0]) if self.args else ""


class InputError(SatisficeError, ValueError):
    """A malformed request: messages that are not a list of {role, content}, bad text."""


class TokenizerError(SatisficeError, ValueError):
    """An unknown encoding or tokenizer family."""


class DatasetError(SatisficeError, ValueError):
    """Outcome data that cannot be loaded; the message names the file and the problem."""


class NoRouteError(SatisficeError):
    """No model satisfies the constraints. `.filtered` maps each model to why it was dropped,
    `.rules` to the constraint that dropped it (`context_window`, `needs`, `exclude`, ...)."""

    def __init__(
        self,
        message: str,
        filtered: dict[str, str] | None = None,
        rules: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.filtered: dict[str, str] = dict(filtered or {})
        self.rules: dict[str, str] = dict(rules or {})


class UnpricedModelError(SatisficeError):
    """A USD figure was required for a model whose registry entry has no price."""


class CascadeBudgetError(SatisficeError):
    """No answer was accepted because the latency budget or cost cap ruled out the steps
    that might have produced one. `.result` holds every step run and why the rest were not;
    raise the budget, or use on_budget="best" to take the best answer so far."""

    # Every argument past the message has a default, as in every error here: pickle and copy
    # make an error again from its message alone, then restore its fields (a required one
    # had made these errors break a process pool that a failing chat_sync() raised them in).
    def __init__(self, message: str, result: Any = None, attempts: list[Any] | None = None) -> None:
        super().__init__(message)
        self.result = result
        self.attempts = attempts or []  # every call its steps made (router.chat fills it)


class RouterClosedError(SatisficeError):
    """The router was closed (aclose(), close(), the end of `with router:`) before the request
    was made, or while it ran past the grace period closing gives requests in flight: make
    requests before closing the router, or make a new one."""


class ProviderError(SatisficeError):
    """An upstream call failed. Never carries an API key: its message and body are scrubbed
    of every key satisfice holds, whatever the upstream sent."""

    #: The upstream answered 2xx, then the answer was lost (its body cut, or malformed): it
    #: generated the answer and may bill it, so the attempt carries an estimated cost.
    answered = False
    #: What a stream had generated when it failed, beside the text that reached its caller
    #: (tool calls' arguments; `thought`: reasoning), and the usage the upstream last
    #: reported (`reported`): set by the providers, billed by the executor as at least that.
    generated = ""
    thought = ""
    reported: Any = None

    def __init__(
        self,
        message: str,
        *,
        model: str | None = None,
        deployment: str | None = None,
        status: int | None = None,
        retry_after: float | None = None,
        body: Any = None,
        attempts: list[Any] | None = None,
    ) -> None:
        super().__init__(scrub(message))
        self.model = model
        self.deployment = deployment
        self.status = status
        self.retry_after = retry_after
        self.body = scrub(body) if isinstance(body, str) else body
        # Filled by the executor: every attempt made for the request, ledger-ready.
        self.attempts: list[Any] = list(attempts or [])


class RetryableError(ProviderError):
    """429, 408, 5xx or a connection error: another try (or another deployment) may work."""


class StaleConnectionError(RetryableError):
    """A kept-alive connection the upstream had closed gave no answer: re-sent at once, once,
    on a new connection; not counted against the deployment's health."""


class UpstreamTimeoutError(RetryableError):
    """No answer within the attempt's timeout: the next candidate is tried, not this one again."""

    #: The request never left: its time ran out waiting for a pooled connection or while
    #: connecting, so the upstream cannot bill it.
    unsent = False
    #: It ran out waiting in line for a pooled connection (the router's own limit,
    #: `max_connections`): no fault of the upstream's, so no mark against its health.
    queued = False


class AuthError(ProviderError):
    """401/403: the key is wrong or missing; the deployment is disabled until fixed."""


class ContextLengthError(ProviderError):
    """The prompt did not fit; the router moves to a model with a larger window."""


class BadRequestError(ProviderError):
    """A 400 that retrying will not fix: the request itself must change."""


class UnsupportedRequestError(BadRequestError):
    """A model's wire cannot carry this request, found before any call (Anthropic's forced
    JSON tool beside tools, an OpenAI custom tool, tool-call arguments that are not JSON):
    the next candidate is tried, and this is raised only when none can take it."""


class StreamInterruptedError(ProviderError):
    """A stream failed after text had reached the caller, so no fallback was possible.

    `.partial_text` is what was delivered; retry the request if a whole answer is needed.
    """

    def __init__(self, message: str, *, partial_text: str = "", **kw: Any) -> None:
        super().__init__(message, **kw)
        self.partial_text = partial_text


class AllAttemptsFailedError(ProviderError):
    """Every candidate failed. `.attempts` lists each attempt and its cause."""

    def __init__(self, message: str, attempts: list[Any] | None = None) -> None:
        super().__init__(message, attempts=attempts)  # (a default: see CascadeBudgetError)
