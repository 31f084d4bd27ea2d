"""ModelRecordService over gRPC: each RPC is one call into the record store.

Store calls block (SQLite, file writes), so they run in worker threads; the store's own
lock keeps them consistent.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from grpc import aio

from easel.model_manager.v1 import model_record_service_pb2 as pb
from easel.model_manager.v1 import model_record_service_pb2_grpc
from services.common import paging
from services.model_manager import record_convert as convert
from services.model_manager.records.record_store import ModelRecordStore


class ModelRecordServicer(model_record_service_pb2_grpc.ModelRecordServiceServicer):
    def __init__(self, store: ModelRecordStore, models_dir: Path) -> None:
        self._store = store
        self._models_dir = models_dir

    async def GetModel(
        self, request: pb.GetModelRequest, context: aio.ServicerContext
    ) -> pb.GetModelResponse:
        config = await asyncio.to_thread(self._store.get, convert.required_key(request.key))
        return pb.GetModelResponse(model=convert.config_to_pb(config))

    async def CheckModelExists(
        self, request: pb.CheckModelExistsRequest, context: aio.ServicerContext
    ) -> pb.CheckModelExistsResponse:
        exists = await asyncio.to_thread(self._store.exists, convert.required_key(request.key))
        return pb.CheckModelExistsResponse(exists=exists)

    async def ListModels(
        self, request: pb.ListModelsRequest, context: aio.ServicerContext
    ) -> pb.ListModelsResponse:
        query = convert.model_query(request)
        page = paging.page(request.page_size, request.page_token, convert.query_fingerprint(query))
        configs, total = await asyncio.to_thread(
            self._store.search_page, query, page.offset, page.size
        )
        return pb.ListModelsResponse(
            models=[convert.config_to_pb(config) for config in configs],
            next_page_token=page.next_token(total),
            total_size=total,
        )

    async def FindModel(
        self, request: pb.FindModelRequest, context: aio.ServicerContext
    ) -> pb.FindModelResponse:
        config = await asyncio.to_thread(self._store.find, *convert.find_arguments(request))
        return pb.FindModelResponse(model=convert.config_to_pb(config))

    async def CreateModel(
        self, request: pb.CreateModelRequest, context: aio.ServicerContext
    ) -> pb.CreateModelResponse:
        config = await asyncio.to_thread(self._store.add, convert.new_config(request))
        return pb.CreateModelResponse(model=convert.config_to_pb(config))

    async def UpdateModel(
        self, request: pb.UpdateModelRequest, context: aio.ServicerContext
    ) -> pb.UpdateModelResponse:
        key = convert.required_key(request.key)
        changes, field = convert.update_changes(request)
        with convert.in_request_terms(request):
            config = await asyncio.to_thread(self._store.update, key, changes, field=field)
        return pb.UpdateModelResponse(model=convert.config_to_pb(config))

    async def DeleteModel(
        self, request: pb.DeleteModelRequest, context: aio.ServicerContext
    ) -> pb.DeleteModelResponse:
        config = await asyncio.to_thread(self._store.delete, convert.required_key(request.key))
        return pb.DeleteModelResponse(model=convert.config_to_pb(config))

    async def GetStoreInfo(
        self, request: pb.GetStoreInfoRequest, context: aio.ServicerContext
    ) -> pb.GetStoreInfoResponse:
        count = await asyncio.to_thread(self._store.count)
        return convert.store_info(self._store, count, str(self._models_dir))
