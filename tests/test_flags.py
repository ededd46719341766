"""`ember serve` / `ember complete` flags come from the config dataclasses: every field meant to be a flag has
one, no flags means exactly the dataclass defaults, and the README's flags table is the contract."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest

from ember.cli.flags import field_docs, flag_dest, flag_fields, flag_name
from ember.cli.main import ENGINE_CONFIGS, SERVE_CONFIGS, _cluster_config, _config, build_parser
from ember.config import ClusterConfig, Config

README = Path(__file__).resolve().parents[1] / "README.md"


def subparser(cmd: str) -> argparse.ArgumentParser:
    action = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return action.choices[cmd]


def options(cmd: str) -> dict[str, argparse.Action]:
    return {s: a for a in subparser(cmd)._actions for s in a.option_strings}


@pytest.mark.parametrize(("cmd", "configs"), [("serve", (*ENGINE_CONFIGS, *SERVE_CONFIGS)),
                                              ("complete", ENGINE_CONFIGS)])
def test_every_flag_field_has_its_flag_and_help(cmd: str, configs: tuple[type, ...]) -> None:
    opts = options(cmd)
    for cls in configs:
        docs = field_docs(cls)
        for f in flag_fields(cls):
            action = opts.get(flag_name(f))
            assert action is not None, f"{cls.__name__}.{f.name} has no {flag_name(f)}"
            assert action.dest == flag_dest(f)
            assert docs.get(f.name), f"{cls.__name__}.{f.name} has no docstring for its help"


def test_no_flags_gives_the_dataclass_defaults() -> None:
    assert _config(build_parser().parse_args(["serve"])) == Config()
    assert _cluster_config(build_parser().parse_args(["serve"])) == ClusterConfig()
    assert _config(build_parser().parse_args(["complete", "hi"])) == Config()


def test_flags_set_their_fields() -> None:
    a = build_parser().parse_args([
        "serve", "--kv-cache-mb", "64", "--no-prefix-caching", "--no-native-kernels", "--max-prefill-backlog", "5",
        "--api-key", "k1", "--api-key", "k2", "--health-stall-timeout", "7", "--db", "sqlite:///x.db",
        "--speculative-ngram", "--num-draft-tokens", "5", "--auth", "keys", "--max-request-timeout", "9",
        "--max-upload-mb", "3", "--replicas", "2", "--no-pin-threads", "--max-queued-requests", "10"])
    c = _config(a)
    assert c.cache.kv_cache_mb == 64 and not c.cache.enable_prefix_caching and not c.model.native_kernels
    assert c.scheduler.max_prefill_backlog_s == 5.0 and c.server.api_keys == ("k1", "k2")
    assert c.server.stall_timeout_s == 7.0 and c.server.max_request_timeout_s == 9.0
    assert c.store.url == "sqlite:///x.db" and c.batch.max_upload_mb == 3
    assert c.speculative.ngram_lookup and c.speculative.num_draft_tokens == 5 and c.platform.auth == "keys"
    assert c.platform.max_queued_requests == 10
    cluster = _cluster_config(a)
    assert cluster.replicas == 2 and not cluster.pin_threads
    assert cluster.max_queued_requests == ClusterConfig.max_queued_requests  # the proxy's bound has no flag


def test_every_readme_flag_is_a_serve_flag() -> None:
    rows = [ln for ln in README.read_text().splitlines() if ln.startswith("| `--")]
    flags = {f for ln in rows for f in re.findall(r"`(--[a-z-]+)`", ln.split("|")[1])}
    assert len(flags) > 30
    assert flags <= set(options("serve")), flags - set(options("serve"))


def test_choices_are_kept() -> None:
    for argv in (["serve", "--device", "tpu"], ["serve", "--kv-cache-dtype", "int8"], ["serve", "--auth", "x"]):
        with pytest.raises(SystemExit):
            build_parser().parse_args(argv)
