"""The admin API (Authorization: Bearer <master key>, from the variable the config names).

POST   /admin/keys               {name, team?, budget_usd?, period?, models?, rpm?, tpm?}
GET    /admin/keys
PATCH  /admin/keys/{id}          any of the fields above
DELETE /admin/keys/{id}          revoke
POST   /admin/teams              {name, budget_usd, period?}
GET    /admin/spend              per key and team: spent, held (reserved), limit
GET    /admin/health             deployments: state, latency, errors
POST   /admin/deployments/{model}/disable|enable   {deployment?}
POST   /admin/reload             re-read the registry (and policy) files; in-flight
                                 requests finish on the snapshot they started with
"""

from __future__ import annotations

import hmac
import json
import logging
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from .._redact import scrub
from ..errors import ConfigError, SatisficeError
from .config import check_aliases
from .state import Budget, StateUnavailable, VirtualKey

if TYPE_CHECKING:
    from .app import Service

_log = logging.getLogger("satisfice.server")
_KEY_FIELDS = {"name", "team", "budget_usd", "period", "models", "rpm", "tpm"}
_MAX_MODELS = 4096  # a key's model list: more than any registry names


def _err(status: int, msg: str, kind: str = "invalid_request_error") -> Response:
    # the server's keys scrubbed from it, as /v1's errors are (`HTTPError`): a message may
    # quote what the caller sent, and a satisfice key pasted into a field came back whole
    body = {"error": {"message": scrub(msg), "type": kind, "param": None, "code": None}}
    return JSONResponse(body, status)


def _name(v: Any, field: str) -> str:
    """A name the admin API stores and later shows (in JSON, metrics labels, logs): a string
    of at most 200 characters that encodes as UTF-8 (a lone surrogate stored once made
    every later listing and /metrics fail)."""
    if not isinstance(v, str) or not v or len(v) > 200:
        raise ConfigError(f"{field} must be a non-empty string of at most 200 characters")
    try:
        v.encode("utf-8")
    except UnicodeEncodeError:
        raise ConfigError(f"{field} holds an unpaired surrogate (such as \\ud800)") from None
    if any(ord(c) < 32 for c in v):
        raise ConfigError(f"{field} holds a control character")
    if scrub(v) != v:  # stored, it had been listed, a metric's label and on every record
        raise ConfigError(f"{field} holds a key (a secret the server redacts); name it otherwise")
    return v


def _budget(v: Any) -> float:
    """A budget in USD: a finite number from 0 to a billion (JSON allows Infinity, and a
    1e300 budget overflows the counters)."""
    if isinstance(v, bool) or not isinstance(v, int | float) or not 0 <= v <= 1e9:
        raise ConfigError(f"budget_usd must be a number from 0 to 1e9, got {v!r:.40}")
    return float(v)


def master_refusal(svc: Service, request: Request, what: str = "the admin API") -> Response | None:
    """None when the request carries the master key (compared in constant time), else the
    401 (403 with no master key set) that refuses it."""
    master = svc.master_key
    if master is None:
        # the variable's name is the operator's business, not a caller's
        return _err(403, f"{what} is off: this server has no master key set")
    auth = request.headers.get("authorization", "")
    given = auth[7:].strip() if auth.lower().startswith("bearer ") else ""
    if not hmac.compare_digest(given.encode(), master.encode()):
        return _err(401, f"{what} needs the master key")
    return None


def admin_routes(svc: Service) -> list[Route]:
    def guard(request: Request) -> Response | None:
        return master_refusal(svc, request)

    async def body(request: Request) -> dict[str, Any]:
        from .app import _body

        # as /v1 reads a body: at most max_body_bytes, in read_timeout_s (a 6 MB body and
        # one sent a byte at a time had been read whole)
        cfg = svc.config
        raw = await _body(request.receive, request.headers, cfg.max_body_bytes,
                          svc.deadlines(), cfg.read_timeout_s)  # fmt: skip
        try:
            d = json.loads(raw or b"{}")
        except (ValueError, RecursionError):
            raise ConfigError("the body is not JSON") from None
        if not isinstance(d, dict):
            raise ConfigError("the body must be a JSON object")
        return d

    def checked(d: dict[str, Any]) -> dict[str, Any]:
        bad = set(d) - _KEY_FIELDS
        if bad:
            raise ConfigError(f"unknown field(s) {sorted(bad)}; known: {sorted(_KEY_FIELDS)}")
        for f in ("rpm", "tpm"):
            v = d.get(f)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
                raise ConfigError(f"{f} must be an integer >= 1")
        if d.get("budget_usd") is not None:
            _budget(d["budget_usd"])
        if "period" in d and d["period"] not in ("day", "month", "total"):
            raise ConfigError("period must be day, month or total")
        if "name" in d:
            _name(d["name"], "name")
        if d.get("team") is not None:
            _name(d["team"], "team")
        if d.get("models") is not None:
            if not isinstance(d["models"], list) or len(d["models"]) > _MAX_MODELS:
                raise ConfigError(
                    f"models must be a list of at most {_MAX_MODELS} model ids or aliases"
                )
            for i, m in enumerate(d["models"]):
                _name(m, f"models[{i}]")
            # a model this server's registry lacks (a typo) had made a key every request on
            # which was refused, as an alias naming one is refused at start (check_aliases)
            reg, aliases = svc.router.registry, svc.config.aliases
            unknown = [m for m in d["models"] if m != "auto" and m not in aliases and m not in reg]
            if unknown:
                raise ConfigError(
                    f"models names what this server neither has nor routes by: {unknown}; "
                    "give model ids, aliases or auto (GET /v1/models lists them)"
                )
        return d

    def wrap(fn: Any) -> Any:
        async def endpoint(request: Request) -> Response:
            if (denied := guard(request)) is not None:
                return denied
            from .app import HTTPError

            try:
                return await fn(request)  # type: ignore[no-any-return]
            except HTTPError as e:  # the body's: too large (413), too slow (408)
                return JSONResponse(e.body(), e.status, headers=e.headers)
            except ClientDisconnect:
                return Response(status_code=499)  # never sent: the connection is gone
            except StateUnavailable as e:  # worth retrying, as /v1 says for the same outage
                return _err(503, f"{e}; try again when it is back", "service_unavailable")
            except SatisficeError as e:
                return _err(400, str(e))
            except Exception as e:  # a bug of ours: the API's error shape, the type alone logged
                _log.error("admin request failed: %s", type(e).__name__,
                           extra={"event": "internal"})  # fmt: skip
                return _err(500, f"internal error ({type(e).__name__})", "server_error")

        return endpoint

    async def create_key(request: Request) -> Response:
        d = checked(await body(request))
        if not isinstance(d.get("name"), str) or not d["name"]:
            raise ConfigError("name is required")
        k, secret = VirtualKey.new(d.pop("name"), **d)
        await svc.state.put_key(k)
        return JSONResponse({**k.public(), "key": secret}, 201)

    async def list_keys(request: Request) -> Response:
        return JSONResponse({"keys": [k.public() for k in await svc.state.list_keys()]})

    async def _find(kid: str) -> VirtualKey:
        k = await svc.state.key_by_id(kid)
        if k is None:  # a 404, as for any id nothing answers to (it had been a 400)
            from .app import HTTPError

            raise HTTPError(404, f"no key with id {kid!r:.80}; GET /admin/keys lists them",
                            "invalid_request_error", "key_not_found")  # fmt: skip
        return k

    async def update_key(request: Request) -> Response:
        change = checked(await body(request))  # the body first: the key is read just before
        old = await _find(request.path_params["kid"])
        if old.revoked:
            return _err(409, f"key {old.id!r} is revoked; create a new one")
        new = replace(old, **change)
        if not await svc.state.replace_key(old, new):  # a revoke or PATCH came in between
            return _err(409, f"key {old.id!r} changed meanwhile; read it and try again")
        return JSONResponse(new.public())

    async def revoke_key(request: Request) -> Response:
        k = replace(await _find(request.path_params["kid"]), revoked=True)
        await svc.state.put_key(k)
        return JSONResponse(k.public())

    async def create_team(request: Request) -> Response:
        d = await body(request)
        if set(d) - {"name", "budget_usd", "period"}:
            raise ConfigError("a team is {name, budget_usd, period?}")
        _name(d.get("name"), "name")
        if d.get("period", "month") not in ("day", "month", "total"):
            raise ConfigError("period must be day, month or total")
        b = Budget(f"team:{d['name']}", _budget(d.get("budget_usd")), d.get("period", "month"))
        await svc.state.put_team(b)
        return JSONResponse({"team": d["name"], "budget_usd": b.limit_usd, "period": b.period}, 201)

    async def spend(request: Request) -> Response:
        await svc.settled()  # an answer already sent is in what this shows
        out = []
        teams = set()
        for k in await svc.state.list_keys():
            for b in await svc.budgets_of(k):
                if b.scope.startswith("team:"):
                    if b.scope in teams:
                        continue
                    teams.add(b.scope)
                spent, held = await svc.state.spent(b)
                out.append(
                    {
                        "scope": b.scope,
                        "name": k.name if b.scope.startswith("key:") else b.scope[5:],
                        "period": b.period,
                        "limit_usd": b.limit_usd,
                        "spent_usd": spent,
                        "held_usd": held,
                        "left_usd": b.limit_usd - spent - held,
                    }
                )
        return JSONResponse({"budgets": out})

    async def health(request: Request) -> Response:
        return JSONResponse({"deployments": svc.router.health()})

    async def set_deployment(request: Request) -> Response:
        model, action = request.path_params["model"], request.path_params["action"]
        dep = (await body(request)).get("deployment")
        if action == "disable":
            svc.router.disable(model, dep, reason="disabled by an admin")
        elif action == "enable":
            svc.router.enable(model, dep)
        else:
            raise ConfigError("action is enable or disable")
        return JSONResponse({"deployments": svc.router.health()})

    async def reload(request: Request) -> Response:
        from ..policy import Policy
        from ..registry import Registry

        c = svc.config
        reg = Registry.load(c.registry_path) if c.registry_path else Registry.default()
        pol = Policy.load(c.policy_path) if c.policy_path else None
        if svc.refresher is not None:  # the prices the last refresh brought, kept
            reg = svc.refresher.onto(reg)
        check_aliases(c.aliases, reg)  # as at start: a model renamed or dropped since
        svc.router.update(registry=reg, policy=pol)
        svc.register_secrets(reg)  # (the keys its deployments name now)
        as_of = reg.meta.get("prices_as_of")  # (a TOML date: said as text; none: null)
        return JSONResponse(
            {"models": len(reg), "prices_as_of": None if as_of is None else str(as_of)}
        )

    return [
        Route("/admin/keys", wrap(create_key), methods=["POST"]),
        Route("/admin/keys", wrap(list_keys), methods=["GET"]),
        Route("/admin/keys/{kid}", wrap(update_key), methods=["PATCH"]),
        Route("/admin/keys/{kid}", wrap(revoke_key), methods=["DELETE"]),
        Route("/admin/teams", wrap(create_team), methods=["POST"]),
        Route("/admin/spend", wrap(spend), methods=["GET"]),
        Route("/admin/health", wrap(health), methods=["GET"]),
        # `path`: a model id may hold "/" (OpenRouter's do); the action is the last segment
        Route("/admin/deployments/{model:path}/{action}", wrap(set_deployment), methods=["POST"]),
        Route("/admin/reload", wrap(reload), methods=["POST"]),
    ]
