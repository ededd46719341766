"""Decode tokens/s of one random-weight model per architecture family, each against the Llama path at the
same dimensions, so a family that falls off the fast kernels (native attention, fused layer steps, packed
int4/int8 matmuls) shows as a ratio below the 0.9x target.

    .venv/bin/python bench/families.py [--quantization int4] [--batches 1 8] [--new-tokens 64] [--repeats 3] [--threads 1]

Every model has SmolLM2-135M's dimensions (576 wide, 30 layers, 9 query / 3 KV heads of 64, 1536 MLP,
49152 vocabulary) and switches on what makes its family differ (Qwen 2's q/k/v biases, Qwen 3's q/k norms,
Mistral's sliding window, Llama 3's rope scaling, Phi-3's fused projections and LongRoPE). Each is written
as a Hugging Face folder (config.json, bf16 safetensors, SmolLM2's tokenizer.json) and loaded the way
`ember serve --model FOLDER` loads one, then run on the engine in-process: prompts of 32 random tokens,
greedy, `ignore_eos`; decode tokens/s counts the tokens after each sequence's first, over the time after
the step that prefilled them. Families whose model_type the registry does not know are reported as such.
Runs alternate families within each repeat so a noisy host hurts them alike; the median is reported.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from ember.config import CacheConfig, Config, ModelConfig, SchedulerConfig
from ember.engine.engine import Engine
from ember.engine.request import EngineRequest, SamplingParams
from ember.errors import ModelLoadError
from ember.model.catalog import resolve_model
from ember.model.loader import load_model

DIMS = dict(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
            num_attention_heads=9, num_key_value_heads=3, head_dim=64, max_position_embeddings=8192,
            rms_norm_eps=1e-5, bos_token_id=1, eos_token_id=2, tie_word_embeddings=True)
"""SmolLM2-135M's dimensions, shared by every family."""

FAMILIES: dict[str, dict[str, Any]] = {
    "llama": {"model_type": "llama", "rope_theta": 100000.0},
    "llama3": {"model_type": "llama", "rope_theta": 500000.0, "rope_scaling": {
        "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
        "original_max_position_embeddings": 1024}},
    # A window shorter than prompt + output, so the windowed attention is the one measured.
    "mistral": {"model_type": "mistral", "rope_theta": 1000000.0, "sliding_window": 64},
    "qwen2": {"model_type": "qwen2", "rope_theta": 1000000.0, "use_sliding_window": False},
    "qwen3": {"model_type": "qwen3", "rope_theta": 1000000.0, "attention_bias": False},
    "phi3": {"model_type": "phi3", "rope_theta": 10000.0, "original_max_position_embeddings": 1024,
             "rope_scaling": {"type": "longrope", "short_factor": [1.0 + i / 64 for i in range(32)],
                              "long_factor": [1.5 + i / 16 for i in range(32)]}},
}
BASELINE = "llama"


def write_family(name: str, folder: Path, tokenizer_dir: Path) -> None:
    """A random-weight Hugging Face folder of the family, as transformers saves one."""
    import transformers

    config = transformers.AutoConfig.for_model(**{**DIMS, **FAMILIES[name]})
    config.torch_dtype = "bfloat16"
    torch.manual_seed(0)
    with torch.device("meta"):
        meta = transformers.AutoModelForCausalLM.from_config(config)
    state = {}
    for key, t in meta.state_dict().items():
        state[key] = (torch.ones(t.shape) if t.ndim == 1 and "norm" in key else torch.randn(t.shape) * 0.02).to(
            torch.bfloat16)
    if config.tie_word_embeddings:
        state.pop("lm_head.weight", None)
    from safetensors.torch import save_file

    folder.mkdir(parents=True)
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
    config.save_pretrained(folder)
    for f in tokenizer_dir.iterdir():
        shutil.copy(f, folder / f.name)


def smollm_tokenizer_dir(out: Path) -> Path:
    """SmolLM2's tokenizer as a tokenizer.json folder (transformers converts it from the embedded GGUF)."""
    import transformers

    ref = resolve_model(None)
    tok = transformers.AutoTokenizer.from_pretrained(str(ref.path.parent), gguf_file=ref.path.name)
    tok.save_pretrained(out)
    for extra in out.glob("*"):
        if extra.name not in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
            extra.unlink()
    return out


def decode_rate(engine: Engine, batch: int, new_tokens: int, rng: random.Random, vocab: int) -> float:
    params = SamplingParams(max_tokens=new_tokens, temperature=0.0, ignore_eos=True)
    for i in range(batch):
        prompt = tuple(rng.randrange(100, vocab) for _ in range(32))
        engine.add(EngineRequest(f"b{time.monotonic_ns()}-{i}", prompt, params))
    first = 0
    while engine.has_work and first < batch:  # prefill steps: every sequence gets its first token
        first += sum(1 for o in engine.step() if o.new_token_ids)
    t0 = time.perf_counter()
    n = 0
    while engine.has_work:
        n += sum(len(o.new_token_ids) for o in engine.step())
    return n / (time.perf_counter() - t0)


def cpu_line() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return platform.processor() or "unknown CPU"
    fields = dict(line.split(":", 1) for line in out.splitlines() if ":" in line)
    model = fields.get("Model name", "?").strip()
    flags = set(fields.get("Flags", "").split())
    isa = [f for f in ("avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "amx_tile",
                       "amx_int8", "amx_bf16") if f in flags]
    return f"{model}, {fields.get('CPU(s)', '?').strip()} CPUs, flags: {' '.join(isa) or 'none of note'}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quantization", default="int4", choices=["int4", "int8", "none"])
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    # One thread: on a shared 2-core host two OpenMP threads contending with other work ran 20x slower.
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--families", nargs="+", default=list(FAMILIES))
    ap.add_argument("--json", type=Path, help="also write every figure here")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    names = [BASELINE, *(f for f in a.families if f != BASELINE)]

    engines: dict[str, Engine] = {}
    unsupported: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="ember-families-") as tmp:
        tok_dir = smollm_tokenizer_dir(Path(tmp) / "tokenizer")
        for name in names:
            folder = Path(tmp) / name
            write_family(name, folder, tok_dir)
            try:
                lm = load_model(ModelConfig(model=str(folder), quantization=a.quantization))
            except ModelLoadError as e:
                unsupported[name] = str(e)
                continue
            finally:
                shutil.rmtree(folder, ignore_errors=True)
            engines[name] = Engine(lm, Config(
                model=ModelConfig(model=str(folder), quantization=a.quantization),
                cache=CacheConfig(kv_cache_mb=256, enable_prefix_caching=False),
                scheduler=SchedulerConfig(max_num_seqs=64, max_num_batched_tokens=512)))

    rates: dict[str, dict[int, list[float]]] = {n: {b: [] for b in a.batches} for n in engines}
    rng = random.Random(0)
    for engine in engines.values():  # warm-up: first calls build kernels' scratch and caches
        decode_rate(engine, 1, 4, rng, DIMS["vocab_size"])
    for _ in range(a.repeats):
        for b in a.batches:
            for name, engine in engines.items():
                rates[name][b].append(decode_rate(engine, b, a.new_tokens, rng, DIMS["vocab_size"]))

    print(f"CPU: {cpu_line()}; torch threads {a.threads}; quantization {a.quantization}; "
          f"{a.new_tokens} new tokens after 32-token prompts; median of {a.repeats}")
    head = " | ".join(f"batch {b} tok/s | vs {BASELINE}" for b in a.batches)
    print(f"| family | {head} |")
    print("| --- |" + " --- | --- |" * len(a.batches))
    base = {b: statistics.median(rates[BASELINE][b]) for b in a.batches} if BASELINE in rates else {}
    for name in names:
        if name in unsupported:
            print(f"| {name} | not loadable: {unsupported[name]} |")
            continue
        cells = []
        for b in a.batches:
            m = statistics.median(rates[name][b])
            cells.append(f"{m:.1f} | {m / base[b]:.2f}x" if base else f"{m:.1f} | -")
        print(f"| {name} | {' | '.join(cells)} |")
    if a.json:
        a.json.write_text(json.dumps({"cpu": cpu_line(), "args": {k: str(v) for k, v in vars(a).items()},
                                      "rates": rates, "unsupported": unsupported}, indent=1))


if __name__ == "__main__":
    main()
