"""The bill of the check now running, a context variable in a module of its own: chat() asks
it on every call whether it runs inside a check, and importing the checks' module there (a
relative import in a function runs importlib's Python code) had cost chat() 4% more
instructions (`benches/instructions.py chat`)."""

from __future__ import annotations

from contextvars import ContextVar

__all__ = ["CHECK_BILL", "CHECK_ROOM"]

#: `_verdict._Bill` while a check runs (`_verdict.checked`), else None (typed there; no
#: `typing` here, which Router() does not import).
CHECK_BILL: ContextVar[object] = ContextVar("satisfice_check_calls", default=None)

#: While a request with a cost cap (its max_cost_usd, or a server budget's hold) runs its
#: checks: a function of the USD its cap has left (`Run.room`). A router call a check makes
#: (a judge's) is capped by it: a judge's 3,000 tokens had taken a key 2.4x past its budget,
#: in one admitted request whose hold had not counted them.
CHECK_ROOM: ContextVar[object] = ContextVar("satisfice_check_room", default=None)
