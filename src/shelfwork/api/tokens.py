"""API tokens, for admins (`shelfwork token ...` does the same from a shell), and `/me`."""

from __future__ import annotations

from dataclasses import asdict
from datetime import timedelta
from typing import Annotated

from fastapi import APIRouter, Path, Request

from .auth import Admin, TokenInfo, Viewer, auth_of
from .errors import AccessError, ApiError, responses
from .schemas import MAX_SMALL_ID, MeOut, TokenCreated, TokenIn, TokenList, TokenOut

router = APIRouter(tags=["auth"])


def _out(info: TokenInfo) -> TokenOut:
    return TokenOut(**asdict(info), active=info.active)


@router.get("/me", response_model=MeOut, responses=responses(401), summary="Who the caller is")
def me(who: Viewer) -> MeOut:
    return MeOut(kind=who.kind, name=who.name, role=who.role)  # type: ignore[arg-type]


@router.get(
    "/tokens",
    response_model=TokenList,
    responses=responses(401, 403),
    summary="API tokens, revoked ones included (admin)",
)
def list_tokens(request: Request, _who: Admin) -> TokenList:
    return TokenList(items=[_out(t) for t in auth_of(request).tokens.list()])


@router.post(
    "/tokens",
    status_code=201,
    response_model=TokenCreated,
    responses=responses(401, 403, 422),
    summary="Create an API token (admin); the secret is in this response only",
)
def create_token(body: TokenIn, request: Request, who: Admin) -> TokenCreated:
    expires = timedelta(days=body.expires_in_days) if body.expires_in_days else None
    info, secret = auth_of(request).tokens.create(
        body.role, body.name, created_by=who.who, expires_in=expires
    )
    return TokenCreated(**_out(info).model_dump(), token=secret)


@router.delete(
    "/tokens/{token_id}",
    response_model=TokenOut,
    responses=responses(401, 403, 404, 409, 422),
    summary="Revoke an API token (admin)",
)
def revoke_token(
    token_id: Annotated[int, Path(ge=1, le=MAX_SMALL_ID)], request: Request, who: Admin
) -> TokenOut:
    """409 for the token making this request: revoke it with another one (or the CLI), so an
    admin cannot lock themselves out by mistake."""
    tokens = auth_of(request).tokens
    try:
        tokens.get(token_id)
    except AccessError as exc:
        raise ApiError(404, "not_found", str(exc)) from None
    if who.kind == "token" and who.id == token_id:
        raise ApiError(409, "conflict", "this is the token making the request; use another one")
    return _out(tokens.revoke(token_id, by=who.who))
