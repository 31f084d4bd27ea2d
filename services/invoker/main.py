"""Entry point of the invoker process (`easel-invoker`)."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Sequence
from functools import partial

from easel.invoker.v1 import (
    image_service_pb2,
    image_service_pb2_grpc,
    invocation_service_pb2,
    invocation_service_pb2_grpc,
    queue_service_pb2,
    queue_service_pb2_grpc,
    session_service_pb2,
    session_service_pb2_grpc,
)
from services.common.database_url import postgres_url
from services.common.server import ServiceServer, run_process
from services.invoker import session_convert
from services.invoker.clients.inference import InferenceClient
from services.invoker.clients.model_records import ModelRecordsClient
from services.invoker.execution.cache import OutputCache
from services.invoker.image_servicer import ImageServicer
from services.invoker.images.library import open_image_library
from services.invoker.invocation_servicer import InvocationServicer
from services.invoker.invocations.model_defaults import DefaultModels, open_default_model_store
from services.invoker.invocations.registry import load_registry
from services.invoker.queue.stores import open_queue_store
from services.invoker.queue_servicer import QueueServicer
from services.invoker.replica_notices import DEFAULTS_CHANNEL
from services.invoker.replicas import ReplicaLink, new_replica_id
from services.invoker.session_servicer import SessionServicer
from services.invoker.sessions.context import ServiceStubs, context_factory
from services.invoker.sessions.manager import SessionManager
from services.invoker.sessions.shared import SharedSessionManager
from services.invoker.sessions.stores import open_session_store
from services.invoker.sessions.writer import database_writer
from services.invoker.settings import InvokerSettings

DOMAIN = "easel.invoker.v1"


async def build(server: ServiceServer, settings: InvokerSettings) -> None:
    registry = load_registry(settings.custom_nodes_dir)
    database_url, replica_id = settings.database_url, new_replica_id()
    writer = database_writer()  # every store of sessions.db runs its calls on this thread
    defaults = await DefaultModels.open(
        await open_default_model_store(database_url, settings.sessions_db, writer, replica_id),
        settings.default_models,
    )
    models = ModelRecordsClient(settings, defaults)
    server.add_service(
        invocation_service_pb2,
        invocation_service_pb2_grpc,
        "InvocationService",
        InvocationServicer(registry, defaults, models),
    )

    async def check_session(session_id: str) -> None:
        """Refuses an upload naming an unknown session. The session manager needs the
        image library, so it is built after it: this reads it at upload time, once the
        server serves."""
        sessions.get(session_id)

    images = await open_image_library(
        settings.root, check_session=check_session, database_url=database_url
    )
    server.add_service(
        image_service_pb2, image_service_pb2_grpc, "ImageService", ImageServicer(images)
    )
    # Previews only while a watcher asks for them; `sessions` is made below, before any call.
    inference = InferenceClient(
        settings, previews_wanted=lambda session_id: sessions.wants_previews(session_id)
    )
    stubs = ServiceStubs(images, inference, models)
    session_store = await open_session_store(database_url, settings.sessions_db, writer, replica_id)
    queue_store = await open_queue_store(
        database_url, settings.sessions_db, writer, replica_id, settings.queue_lease_s
    )
    parts = (registry, session_store, queue_store, partial(context_factory, stubs))
    cache = OutputCache(settings.node_cache_size) if settings.node_cache_size else None
    url = postgres_url(database_url)
    if url is None:
        sessions = SessionManager(*parts, cache=cache, failure_code=session_convert.failure_code)
    else:
        # Invoker processes on one database share the queue, the sessions and their events.
        link = ReplicaLink(url, replica_id)
        link.on(DEFAULTS_CHANNEL, lambda message: defaults.reload())
        sessions = SharedSessionManager(
            *parts,
            cache=cache,
            failure_code=session_convert.failure_code,
            link=link,
            encode_event=session_convert.event_to_bytes,
            decode_event=session_convert.event_from_bytes,
        )
    await sessions.start()
    server.add_service(
        session_service_pb2,
        session_service_pb2_grpc,
        "SessionService",
        SessionServicer(sessions),
    )
    server.add_service(
        queue_service_pb2, queue_service_pb2_grpc, "QueueService", QueueServicer(sessions)
    )

    async def close() -> None:
        await sessions.close()
        await inference.close()
        await models.close()
        await images.close()
        await defaults.close()
        await asyncio.to_thread(writer.shutdown)

    server.on_shutdown(close)


def main(argv: Sequence[str] | None = None) -> None:
    settings = InvokerSettings.load(sys.argv[1:] if argv is None else argv, prog="easel-invoker")
    run_process(
        "invoker", DOMAIN, settings.invoker_address, settings, partial(build, settings=settings)
    )


if __name__ == "__main__":
    main()
