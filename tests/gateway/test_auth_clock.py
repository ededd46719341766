"""The API-key cache and the open-mode recheck age on the authenticator's clock: what another process
changes in the store (a key deleted or created, the first account) is seen here once the cache entry has
aged past its TTL, and not before. The clock is advanced, never slept through."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from ember.config import PlatformConfig, StoreConfig
from ember.errors import Unauthorized
from ember.platform.auth import Authenticator
from ember.store.accounts import Accounts
from ember.store.api_keys import ApiKeys
from ember.store.db import Store, open_store
from tests.fake_clock import FakeClock


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = open_store(StoreConfig(data_dir=str(tmp_path)))
    yield s
    s.close()


def test_a_key_deleted_elsewhere_works_until_its_cache_entry_is_key_cache_s_old(store: Store) -> None:
    clock = FakeClock()
    config = PlatformConfig()
    auth = Authenticator(ApiKeys(store), Accounts(store), config, clock=clock)
    key = Accounts(store).create("acme", "ops@acme.test").key
    bearer = f"Bearer {key.key}"
    assert auth.authenticate(bearer, inference=True).key_id == key.row.key_id
    ApiKeys(store).delete("acme", None, key.row.key_id)  # as another process would: `auth` is not told
    clock.advance(config.key_cache_s - 0.1)
    assert auth.authenticate(bearer, inference=True).key_id == key.row.key_id  # still cached
    clock.advance(0.2)
    with pytest.raises(Unauthorized):
        auth.authenticate(bearer, inference=True)


def test_an_unknown_key_is_looked_up_again_once_the_negative_ttl_has_passed(
        store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    clock = FakeClock()
    auth = Authenticator(ApiKeys(store), Accounts(store), PlatformConfig(auth="keys"), clock=clock)
    asked: list[str] = []
    real_verify = auth.keys.verify
    monkeypatch.setattr(auth.keys, "verify", lambda token: asked.append(token) or real_verify(token))
    bearer = "Bearer fw_" + "u" * 43
    for step in (0.0, Authenticator.NEGATIVE_TTL_S - 0.1, 0.2):
        clock.advance(step)
        with pytest.raises(Unauthorized):
            auth.authenticate(bearer, inference=True)
    assert len(asked) == 2  # the first lookup, and the one after the negative entry expired


def test_open_mode_closes_once_the_recheck_sees_the_first_account(store: Store) -> None:
    clock = FakeClock()
    auth = Authenticator(ApiKeys(store), Accounts(store), PlatformConfig(auth="auto"), clock=clock)
    assert auth.serves_open()
    Accounts(store).create("acme", "ops@acme.test")  # by another process: `auth` is not told
    clock.advance(0.9)
    assert auth.serves_open()  # re-read at most once a second
    clock.advance(0.2)
    assert not auth.serves_open()
    with pytest.raises(Unauthorized):
        auth.authenticate(None, inference=True)
