"""Shared fixtures: the real SmolLM2 model, a tiny random-weight Llama, a live uvicorn server, and real
`ember serve` processes (tests.harness)."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch

from ember.config import CacheConfig, Config, ModelConfig, SchedulerConfig, StoreConfig
from ember.model.args import ModelArgs
from ember.model.catalog import ModelRef, resolve_model
from ember.model.checkpoint import Checkpoint
from ember.model.formats import read_checkpoint
from ember.model.loader import LoadedModel, build_model, load_model
from tests.harness import LiveServer, ServeProcess, start_serve
from tests.postgres import PostgresServer

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
torch.set_num_threads(2)

MODEL_ID = "accounts/fireworks/models/smollm2-135m-instruct"


@pytest.fixture(scope="session")
def smol_ref() -> ModelRef:
    return resolve_model(None)


@pytest.fixture(scope="session")
def smol_checkpoint(smol_ref: ModelRef) -> Checkpoint:
    return read_checkpoint(smol_ref.path)


@pytest.fixture(scope="session")
def smol(smol_ref: ModelRef) -> LoadedModel:
    """SmolLM2 in fp32: the exact dequantized GGUF, which the transformers oracle must match."""
    return load_model(ModelConfig(quantization="none"))


@pytest.fixture(scope="session")
def smol_served(smol_ref: ModelRef) -> LoadedModel:
    """SmolLM2 as `ember serve` loads it by default (int4/int8 kernels at the GGUF's own precision)."""
    return load_model(ModelConfig())


def tiny_args(vocab_size: int) -> ModelArgs:
    return ModelArgs(vocab_size=vocab_size, dim=64, n_layers=2, n_heads=4, n_kv_heads=2, hidden_dim=128,
                     norm_eps=1e-5, rope_theta=10000.0, max_seq_len=512, tie_embeddings=True)


def tiny_tensors(args: ModelArgs, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    hd = args.head_dim
    assert hd is not None

    def w(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g) * 0.5

    t = {"model.embed_tokens.weight": w(args.vocab_size, args.dim), "model.norm.weight": torch.ones(args.dim)}
    for i in range(args.n_layers):
        p = f"model.layers.{i}."
        t[p + "input_layernorm.weight"] = torch.ones(args.dim)
        t[p + "post_attention_layernorm.weight"] = torch.ones(args.dim)
        t[p + "self_attn.q_proj.weight"] = w(args.n_heads * hd, args.dim)
        t[p + "self_attn.k_proj.weight"] = w(args.n_kv_heads * hd, args.dim)
        t[p + "self_attn.v_proj.weight"] = w(args.n_kv_heads * hd, args.dim)
        t[p + "self_attn.o_proj.weight"] = w(args.dim, args.n_heads * hd)
        t[p + "mlp.gate_proj.weight"] = w(args.hidden_dim, args.dim)
        t[p + "mlp.up_proj.weight"] = w(args.hidden_dim, args.dim)
        t[p + "mlp.down_proj.weight"] = w(args.dim, args.hidden_dim)
    return t


@pytest.fixture(scope="session")
def tiny(smol_checkpoint: Checkpoint, smol_ref: ModelRef) -> LoadedModel:
    """A 2-layer random-weight Llama that shares SmolLM2's tokenizer: fast engine tests with real text."""
    tok = smol_checkpoint.tokenizer
    args = tiny_args(tok.vocab_size)
    ckpt = Checkpoint(args=args, tensors=tiny_tensors(args), tokenizer=tok, source="tiny")
    model = build_model(ckpt, torch.device("cpu"))
    return LoadedModel(model=model, tokenizer=tok, args=args, ref=smol_ref, device=torch.device("cpu"))


def server_config(data_dir: str | None = None, **cache: object) -> Config:
    """A small server; its store is a fresh SQLite file unless `data_dir` names one."""
    return Config(cache=CacheConfig(kv_cache_mb=256, **cache),  # type: ignore[arg-type]
                  scheduler=SchedulerConfig(max_num_seqs=32, max_num_batched_tokens=512),
                  store=StoreConfig(data_dir=data_dir or tempfile.mkdtemp(prefix="ember-test-")))


@pytest.fixture(scope="session")
def smol_server(smol_served: LoadedModel) -> Iterator[LiveServer]:
    with LiveServer(server_config(), smol_served) as s:
        yield s


@pytest.fixture
def ember_serve(tmp_path: Path) -> Iterator[Callable[..., ServeProcess]]:
    """Start `ember serve FLAGS` (tests.harness.start_serve; its log under tmp_path unless log_path is
    given), waiting for /health; every process started is stopped when the test ends. Without --data-dir
    in FLAGS a server gets a fresh one under tmp_path: a test never opens the default store, which other
    checkouts of ember on the machine may have migrated past this one's schema."""
    started: list[ServeProcess] = []

    def start(*flags: str, **kwargs: object) -> ServeProcess:
        if "--data-dir" not in flags and "--db" not in flags:
            flags = (*flags, "--data-dir", str(tmp_path / f"data-{len(started)}"))
        kwargs.setdefault("log_path", tmp_path / f"serve-{len(started)}.log")
        s = start_serve(*flags, **kwargs)  # type: ignore[arg-type]
        started.append(s)
        return s

    yield start
    for s in started:
        s.stop()


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """One real PostgreSQL server for the session (each test asks it for a fresh database)."""
    server = PostgresServer().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def openai_client(smol_server: LiveServer):
    import openai

    return openai.OpenAI(base_url=smol_server.url + "/v1", api_key="unused", max_retries=0, timeout=120)
