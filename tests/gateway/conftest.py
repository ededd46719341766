"""A live ember with the platform on: a store holding account "acme" (so keys are required)."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest

from ember.config import StoreConfig
from ember.model.loader import LoadedModel
from ember.store.accounts import Accounts, Users
from ember.store.api_keys import ApiKeys
from ember.store.db import open_store
from tests.conftest import LiveServer, server_config


@dataclass
class Platform:
    server: LiveServer
    data_dir: str
    admin_key: str
    """acme's first admin key, as `ember accounts create` prints it."""

    @property
    def url(self) -> str:
        return self.server.url

    def key(self, user_id: str, role: str, account_id: str = "acme") -> str:
        """A new key of a (new or existing) user of `account_id`, made in the store like the CLI does."""
        store = open_store(StoreConfig(data_dir=self.data_dir))
        try:
            if account_id not in [a.account_id for a in Accounts(store).list()]:
                Accounts(store).create(account_id, f"ops@{account_id}.test")
            users = Users(store)
            try:
                users.get(account_id, user_id)
            except Exception:  # noqa: BLE001 - not there yet
                users.create(account_id, user_id, role, f"{user_id}@{account_id}.test")
            return ApiKeys(store).create(account_id, user_id).key
        finally:
            store.close()

    def http(self, key: str | None) -> httpx.Client:
        headers = {"authorization": f"Bearer {key}"} if key else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=120)


@pytest.fixture(scope="session")
def platform(smol_served: LoadedModel) -> Iterator[Platform]:
    data_dir = tempfile.mkdtemp(prefix="ember-platform-")
    store = open_store(StoreConfig(data_dir=data_dir))
    acme = Accounts(store).create("acme", "ops@acme.test")
    Accounts(store).create("globex", "ops@globex.test")
    store.close()
    with LiveServer(server_config(data_dir=data_dir), smol_served) as s:
        yield Platform(s, data_dir, acme.key.key)
