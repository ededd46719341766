"""The official fireworks-ai SDK drives users, API keys and completions against a live ember, unchanged."""

from __future__ import annotations

import fireworks
import openai
import pytest

from tests.conftest import MODEL_ID
from tests.gateway.conftest import Platform


def sdk(p: Platform, key: str) -> fireworks.Fireworks:
    return fireworks.Fireworks(api_key=key, base_url=p.url, account_id="acme", max_retries=0, timeout=120)


def test_users_keys_completions_and_delete(platform: Platform) -> None:
    fw = sdk(platform, platform.admin_key)
    (acct,) = list(fw.accounts.list())
    assert acct.name == "accounts/acme" and acct.email == "ops@acme.test" and acct.state == "READY"
    assert fw.accounts.get().name == "accounts/acme"

    user = fw.users.create(user_id="sdk-bob", role="user", email="bob@acme.test", display_name="Bob")
    assert (user.name, user.role, user.email) == ("accounts/acme/users/sdk-bob", "user", "bob@acme.test")
    assert "accounts/acme/users/sdk-bob" in [u.name for u in fw.users.list()]
    assert fw.users.get("sdk-bob").display_name == "Bob"
    assert fw.users.update("sdk-bob", role="user", display_name="Robert").display_name == "Robert"

    created = fw.api_keys.create("sdk-bob", api_key={"display_name": "ci"})
    assert created.key and created.key.startswith("fw_") and created.secure is True
    assert created.prefix == created.key[:8] and created.display_name == "ci"

    # the new key runs completions through both SDKs
    bob = sdk(platform, created.key)
    r = bob.completions.create(model=MODEL_ID, prompt="The capital of France is", max_tokens=4, temperature=0)
    assert r.choices[0].text and r.usage.completion_tokens == 4
    oa = openai.OpenAI(base_url=platform.url + "/v1", api_key=created.key, max_retries=0)
    assert oa.completions.create(model=MODEL_ID, prompt="Hi", max_tokens=2).usage.completion_tokens == 2

    listed = list(fw.api_keys.list("sdk-bob"))
    assert [k.key_id for k in listed] == [created.key_id]
    assert listed[0].key is None  # the secret is shown once, at creation, never listed

    # bob manages his own keys, not other users'
    assert [k.key_id for k in sdk(platform, created.key).api_keys.list("sdk-bob")] == [created.key_id]
    with pytest.raises(fireworks.PermissionDeniedError):
        sdk(platform, created.key).api_keys.list("admin")

    fw.api_keys.delete("sdk-bob", key_id=created.key_id)
    with pytest.raises(fireworks.AuthenticationError):  # the very next request, same process
        bob.completions.create(model=MODEL_ID, prompt="Hi", max_tokens=1)
    with pytest.raises(openai.AuthenticationError) as e:
        oa.completions.create(model=MODEL_ID, prompt="Hi", max_tokens=1)
    assert e.value.code == "invalid_api_key"
    assert list(fw.api_keys.list("sdk-bob")) == []


def test_missing_and_wrong_keys_are_401(platform: Platform) -> None:
    with pytest.raises(fireworks.AuthenticationError):
        list(sdk(platform, "fw_" + "x" * 43).users.list())
    oa = openai.OpenAI(base_url=platform.url + "/v1", api_key="unused", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        oa.completions.create(model=MODEL_ID, prompt="Hi", max_tokens=1)
