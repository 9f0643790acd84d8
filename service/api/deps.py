"""Shared dependencies as ``Annotated`` aliases (the FastAPI template's deps.py)."""

from __future__ import annotations

import secrets
from typing import Annotated

from fastapi import Depends, Header, Request

from service.errors import NotReadyError, UnauthorizedError
from service.state import ServerState


async def get_state(request: Request) -> ServerState:
    # async: FastAPI runs a plain-def dependency in a worker thread, a thread hop (and CPU outside
    # the event loop, which no request's energy would see) for an attribute lookup.
    state = getattr(request.app.state, "server", None)
    if state is None:
        raise NotReadyError("server is starting")
    assert isinstance(state, ServerState)
    return state


StateDep = Annotated[ServerState, Depends(get_state)]


async def require_admin(state: StateDep, authorization: Annotated[str | None, Header()] = None) -> None:
    """PUT endpoints: a bearer token when one is configured (compared in constant time)."""
    token = state.settings.admin_token
    if token is None:
        return
    scheme, _, given = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not secrets.compare_digest(
        given.encode(), token.get_secret_value().encode()
    ):
        raise UnauthorizedError("a valid 'Authorization: Bearer <token>' header is required")


AdminDep = Depends(require_admin)
