"""create_app(config): the FastAPI application, its routers, and the engine's lifetime."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from fastapi import FastAPI
from prometheus_client import CollectorRegistry, ProcessCollector

from ember.config import Config
from ember.engine.client import EngineClient, TorchThread
from ember.engine.engine import Engine
from ember.engine.metrics import EngineMetrics
from ember.gateway import accounts, audit_logs, batch_jobs, datasets, openai_batch, quotas, usage
from ember.gateway.batch_runner import BatchRunner
from ember.gateway.services import BatchServices
from ember.http.access_log import redact_access_log
from ember.http.deps import AppState, ServedModel
from ember.http.draining import RefuseWhileDraining
from ember.http.errors import install_error_handlers
from ember.http.host_check import HostCheck
from ember.http.request_bounds import BoundedRequests
from ember.http.response_headers import ResponseHeaders
from ember.model.loader import LoadedModel, load_model
from ember.platform.limits import Buckets
from ember.platform.services import Platform
from ember.protocol.responses import document_stream_models
from ember.routes import chat, completions, health, models, tokenize
from ember.routes.docs_page import mount_docs
from ember.routes.playground import mount_playground
from ember.store.db import open_store

log = logging.getLogger("ember")


def build_client(config: Config, loaded: LoadedModel, metrics: EngineMetrics,
                 clock: Callable[[], float] = time.monotonic) -> EngineClient:
    return EngineClient(Engine(loaded, config), on_step=metrics.on_step, clock=clock)


def create_app(config: Config, loaded: LoadedModel | None = None,
               torch_thread: TorchThread | None = None, buckets: Buckets | None = None,
               clock: Callable[[], float] = time.monotonic) -> FastAPI:
    """The app; pass `loaded` to reuse a model already in memory (tests, several apps in one process),
    and the TorchThread that loaded it, so the step loop runs on that same thread. `buckets`: where rate
    limits are counted when several processes serve one platform (ember.cluster), else in this process.
    `clock`: the monotonic clock of the API-key cache, the open-mode recheck and the stall watchdog."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        redact_access_log()
        store = await asyncio.to_thread(open_store, config.store)
        platform = Platform(store, config.platform, config.server.api_keys, config.scheduler.max_num_seqs,
                            buckets=buckets, clock=clock)
        platform.start()
        tt = torch_thread or TorchThread()
        lm = loaded if loaded is not None else await tt.run(load_model, config.model)
        registry = CollectorRegistry()
        ProcessCollector(registry=registry)  # process_resident_memory_bytes: what a soak watches for leaks
        metrics = EngineMetrics(registry)
        client = await tt.run(build_client, config, lm, metrics, clock)
        # llguidance's vocabulary view takes ~0.2 s to build: at start-up, not inside a first request.
        await tt.run(lambda: client.engine.grammars.ll_tokenizer)
        client.start(tt)
        served = ServedModel(lm.ref.model_id, lm.ref.aliases, lm.tokenizer, client.engine.max_model_len,
                             client.engine.grammars)
        app.state.ember = AppState(client=client, model=served, platform=platform,
                                   stall_timeout_s=config.server.stall_timeout_s,
                                   max_request_timeout_s=config.server.max_request_timeout_s)
        # Datasets and batch jobs: the runner resumes every job the store holds as active.
        app.state.batch = await asyncio.to_thread(BatchServices.build, store, config.store.resolved_data_dir(),
                                                  config.batch, config.server.public_url)
        runner = BatchRunner(app.state.batch, app.state.ember.pipeline)
        app.state.batch_runner = runner
        runner.start()
        app.state.registry = registry
        app.state.metrics = metrics
        log.info("serving %s (%d KV blocks of %d tokens)", served.model_id, client.engine.pool.num_blocks,
                 client.engine.pool.block_size)
        try:
            yield
        finally:
            await runner.stop()
            client.stop()
            tt.shutdown()
            await asyncio.to_thread(platform.stop)

    app = FastAPI(title="ember", version="0.1.0", lifespan=lifespan, docs_url=None, redoc_url=None)
    install_error_handlers(app)
    app.include_router(completions.router)
    app.include_router(chat.router)
    app.include_router(tokenize.router)
    app.include_router(models.router)
    app.include_router(health.router)
    for router in (accounts.router, usage.router, quotas.router, datasets.router, batch_jobs.router,
                   openai_batch.router, audit_logs.router):
        app.include_router(router)
    app.add_middleware(BoundedRequests, max_body_bytes=int(config.server.max_body_mb * 1024 * 1024),
                       max_upload_bytes=config.batch.max_upload_mb * 1024 * 1024)
    app.add_middleware(RefuseWhileDraining)
    app.add_middleware(ResponseHeaders)
    app.add_middleware(HostCheck, allowed_hosts=config.server.allowed_hosts())
    document_stream_models(app)
    mount_playground(app)
    mount_docs(app)
    return app
