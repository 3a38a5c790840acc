"""The bill of the check now running, a context variable in a module of its own: chat() asks
it on every call whether it runs inside a check, and importing the checks' module there (a
relative import in a function runs importlib's Python code) had cost chat() 4% more
instructions (`benches/instructions.py chat`)."""

from __future__ import annotations

from contextvars import ContextVar

__all__ = ["CHECK_BILL"]

#: `_verdict._Bill` while a check runs (`_verdict.checked`), else None (typed there; no
#: `typing` here, which Router() does not import).
CHECK_BILL: ContextVar[object] = ContextVar("satisfice_check_calls", default=None)
