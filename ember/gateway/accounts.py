"""Accounts, users and API keys (Gateway paths under /v1/accounts)."""

from __future__ import annotations

import re

from fastapi import APIRouter, Query, Request

from ember.errors import InvalidRequest, PermissionDenied
from ember.gateway.caps import check_keys
from ember.gateway.protocol import CreateApiKeyBody, DeleteApiKeyBody, UserBody
from ember.gateway.wire import account_json, key_json, list_response, parse_time, user_json
from ember.http.audit import GatewayChange
from ember.http.deps import GatewayAuth, StateDep
from ember.platform.auth import Principal, authorization_of
from ember.store.ids import check_id, utcnow

router = APIRouter(tags=["gateway"])

PageSize = Query(None, alias="pageSize")
PageToken = Query(None, alias="pageToken", max_length=512)
Filter = Query(None, max_length=512)
OrderBy = Query(None, alias="orderBy", max_length=256)


def _account_principal(request: Request, state: StateDep) -> Principal:
    return state.platform.auth.authenticate(authorization_of(request), inference=False)


@router.get("/v1/accounts")
async def list_accounts(request: Request, state: StateDep, page_size: int | None = PageSize,
                        page_token: str | None = PageToken, filter: str | None = Filter,
                        order_by: str | None = OrderBy) -> dict:
    p = _account_principal(request, state)
    if p.user_id is None:  # a static --api-key key belongs to no stored account
        return {"accounts": [], "totalSize": 0}
    if not p.manages:
        raise PermissionDenied("inference-user keys may only run inference")
    items = [account_json(state.platform.accounts.get(p.account_id))]
    return list_response("accounts", items, page_size, page_token, filter, order_by,
                         ("name", "displayName", "email", "state"))


@router.get("/v1/accounts/{account_id}")
async def get_account(account_id: str, state: StateDep, p: GatewayAuth) -> dict:
    return account_json(state.platform.accounts.get(account_id))


# -- users ---------------------------------------------------------------------------------------

def _user_id_from_email(email: str) -> str:
    local = re.sub(r"[^a-z0-9-]+", "-", email.split("@", 1)[0].lower()).strip("-")[:63]
    return local or "user"


@router.post("/v1/accounts/{account_id}/users")
async def create_user(account_id: str, body: UserBody, state: StateDep, p: GatewayAuth, change: GatewayChange,
                      user_id: str | None = Query(None, alias="userId", max_length=200)) -> dict:
    change.note(role=body.role, email=body.email, displayName=body.displayName, serviceAccount=body.serviceAccount)
    p.require_admin()
    if not body.role:
        raise InvalidRequest("role is required (admin, user or inference-user)", param="role")
    if body.serviceAccount and p.role != "admin":
        raise PermissionDenied("only admins create service accounts")
    if user_id is None:
        if not body.email:
            raise InvalidRequest("userId (query) or email is required", param="userId")
        user_id = _user_id_from_email(body.email)
    check_id(user_id, "userId")
    change.resource = f"accounts/{account_id}/users/{user_id}"
    u = state.platform.users.create(account_id, user_id, body.role, body.email or "", body.displayName or "",
                                    bool(body.serviceAccount), audit=change)
    return user_json(u)


@router.get("/v1/accounts/{account_id}/users")
async def list_users(account_id: str, state: StateDep, p: GatewayAuth, page_size: int | None = PageSize,
                     page_token: str | None = PageToken, filter: str | None = Filter,
                     order_by: str | None = OrderBy) -> dict:
    p.require_admin()
    items = [user_json(u) for u in state.platform.users.list(account_id)]
    return list_response("users", items, page_size, page_token, filter, order_by,
                         ("name", "displayName", "email", "role", "state", "createTime"))


@router.get("/v1/accounts/{account_id}/users/{user_id}")
async def get_user(account_id: str, user_id: str, state: StateDep, p: GatewayAuth) -> dict:
    check_id(user_id, "user_id")
    if p.role != "admin" and p.user_id != user_id:
        raise PermissionDenied("a user key reads only its own user")
    return user_json(state.platform.users.get(account_id, user_id))


@router.patch("/v1/accounts/{account_id}/users/{user_id}")
async def update_user(account_id: str, user_id: str, body: UserBody, state: StateDep, p: GatewayAuth,
                      change: GatewayChange) -> dict:
    check_id(user_id, "user_id")
    p.require_admin()
    fields: dict[str, object] = {}
    if body.role is not None:
        fields["role"] = body.role
    if body.displayName is not None:
        fields["display_name"] = body.displayName
    if body.email is not None:
        fields["email"] = body.email
    if body.serviceAccount is not None:
        fields["service_account"] = body.serviceAccount
    if user_id == p.user_id and fields.get("role", "admin") != "admin":
        raise InvalidRequest("an admin cannot take its own admin role away", param="role")
    # `state` is read-only in the spec; ember lets an admin set DISABLED (or READY / ACTIVE to enable).
    # The other values of the spec's enum are ignored, as before, so a client echoing a user back is fine.
    new_state = {"DISABLED": "DISABLED", "READY": "ACTIVE", "ACTIVE": "ACTIVE"}.get(body.state or "")
    if new_state == "DISABLED" and user_id == p.user_id:
        raise InvalidRequest("an admin cannot disable its own user", param="state")
    if new_state is not None:
        fields["state"] = new_state
    change.note(**body.model_dump(exclude_none=True,
                                  include={"role", "displayName", "email", "serviceAccount", "state"}))
    u = state.platform.users.update(account_id, user_id, audit=change, **fields)
    state.platform.auth.forget_user(account_id, user_id)
    return user_json(u)


# -- API keys ------------------------------------------------------------------------------------

def _own_keys(p: Principal, user_id: str) -> None:
    check_id(user_id, "user_id")
    if p.role != "admin" and p.user_id != user_id:
        raise PermissionDenied("a user key manages only its own API keys")


@router.post("/v1/accounts/{account_id}/users/{user_id}/apiKeys")
async def create_api_key(account_id: str, user_id: str, body: CreateApiKeyBody, state: StateDep,
                         p: GatewayAuth, change: GatewayChange) -> dict:
    f = body.apiKey
    change.note(displayName=f.displayName, expireTime=f.expireTime, annotations=len(f.annotations or {}))
    _own_keys(p, user_id)
    expire = parse_time(f.expireTime, "expireTime", required=False)
    if expire is not None and expire <= utcnow():
        raise InvalidRequest("expireTime is in the past", param="expireTime")
    if f.annotations and (len(f.annotations) > 64 or any(len(k) > 63 or len(v) > 255
                                                           for k, v in f.annotations.items())):
        raise InvalidRequest("annotations: at most 64 entries, keys up to 63 and values up to 255 characters",
                             param="annotations")
    user = state.platform.users.get(account_id, user_id)
    check_keys(state.platform.keys, account_id, state.platform.config.max_keys_per_account)
    created = state.platform.keys.create(account_id, user_id, f.displayName or "default", expire,
                                         f.annotations or {}, audit=change)
    state.platform.auth.forget_negative()
    return key_json(created.row, user.email, created.key)


@router.get("/v1/accounts/{account_id}/users/{user_id}/apiKeys")
async def list_api_keys(account_id: str, user_id: str, state: StateDep, p: GatewayAuth,
                        page_size: int | None = PageSize, page_token: str | None = PageToken,
                        filter: str | None = Filter, order_by: str | None = OrderBy) -> dict:
    _own_keys(p, user_id)
    user = state.platform.users.get(account_id, user_id)
    items = [key_json(k, user.email) for k in state.platform.keys.list(account_id, user_id)]
    return list_response("apiKeys", items, page_size, page_token, filter, order_by,
                         ("keyId", "displayName", "prefix", "createTime"))


@router.post("/v1/accounts/{account_id}/users/{user_id}/apiKeys:delete")
async def delete_api_key(account_id: str, user_id: str, body: DeleteApiKeyBody, state: StateDep,
                         p: GatewayAuth, change: GatewayChange) -> dict:
    change.resource = f"accounts/{account_id}/users/{user_id}/apiKeys/{body.keyId}"
    _own_keys(p, user_id)
    row = state.platform.keys.delete(account_id, user_id, body.keyId, audit=change)
    state.platform.auth.forget(row.key_id)
    return {}
