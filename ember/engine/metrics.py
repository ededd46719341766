"""Engine counters for Prometheus, kept in the app's own registry (no process-global collectors)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from ember.engine.engine import Engine, EngineStats
from ember.engine.request import RequestOutput

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class EngineMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.running = Gauge("ember_requests_running", "Sequences in the running batch", registry=registry)
        self.waiting = Gauge("ember_requests_waiting", "Sequences waiting to be scheduled", registry=registry)
        self.kv_used = Gauge("ember_kv_blocks_used", "KV cache blocks in use", registry=registry)
        self.kv_free = Gauge("ember_kv_blocks_free", "KV cache blocks free", registry=registry)
        self.prefix_hit_rate = Gauge("ember_prefix_cache_hit_rate",
                                     "Cached prompt blocks found / full prompt blocks looked up", registry=registry)
        self.preemptions = Gauge("ember_preemptions", "Sequences preempted so far", registry=registry)
        self.kv_touched = Gauge("ember_kv_cache_touched_bytes",
                                "KV cache bytes written at least once (on CPU: resident, up to the budget)",
                                registry=registry)
        self.long_backlog = Gauge("ember_long_prefill_backlog_tokens",
                                  "Prompt tokens long prompts (running or waiting) have still to compute",
                                  registry=registry)
        self.prefill_rate = Gauge("ember_prefill_tokens_per_second",
                                  "Tokens a step computes per second (moving average over large steps)",
                                  registry=registry)
        self.generated = Counter("ember_generated_tokens", "Tokens generated", registry=registry)
        self.finished = Counter("ember_requests_finished", "Finished sequences", ["reason"], registry=registry)
        self.ttft = Histogram("ember_time_to_first_token_seconds", "Arrival to first token",
                              buckets=_LATENCY_BUCKETS, registry=registry)
        self.itl = Histogram("ember_inter_token_latency_seconds", "Engine step time per decoded token",
                             buckets=_LATENCY_BUCKETS, registry=registry)

    def observe_stats(self, s: EngineStats) -> None:
        """Set the gauges from a snapshot; called at every scrape, so an idle engine (after aborts, at
        start-up) reads as it is rather than as it was at its last step."""
        self.running.set(s.num_running)
        self.waiting.set(s.num_waiting)
        self.kv_used.set(s.kv_blocks_used)
        self.kv_free.set(s.kv_blocks_free)
        self.prefix_hit_rate.set(s.prefix_hits / s.prefix_queries if s.prefix_queries else 0.0)
        self.preemptions.set(s.num_preemptions)
        self.kv_touched.set(s.kv_touched_bytes)
        self.long_backlog.set(s.long_prefill_backlog)
        self.prefill_rate.set(s.prefill_tokens_per_s)

    def on_step(self, engine: Engine, step_time: float, outputs: list[RequestOutput]) -> None:
        for o in outputs:
            n = len(o.new_token_ids)
            if not n:
                continue
            self.generated.inc(n)
            if o.num_output_tokens == n and o.first_token_time is not None:
                self.ttft.observe(max(0.0, o.first_token_time - o.arrival_time))
            else:
                self.itl.observe(step_time)
            if o.finish_reason is not None:
                self.finished.labels(reason=str(o.finish_reason)).inc()
