"""ModelCacheService over gRPC: each RPC is one call into the model load service or its
cache."""

from __future__ import annotations

from easel.inference.v1 import model_cache_service_pb2 as pb
from easel.inference.v1 import model_cache_service_pb2_grpc
from services.common import paging
from services.common.errors import InvalidArgumentError
from services.inference import model_cache_convert as convert
from services.inference.model_loads import ModelLoadService
from services.inference.pending import Pending


class ModelCacheServicer(model_cache_service_pb2_grpc.ModelCacheServiceServicer):
    def __init__(self, model_loads: Pending[ModelLoadService]) -> None:
        self._loads = model_loads

    async def LoadModel(self, request, context):
        submodel = convert.submodel_from_pb(request.submodel_type)
        loaded = await self._loads.get().load(request.key, submodel)
        return pb.LoadModelResponse(model=convert.loaded_to_pb(loaded))

    async def GetCacheStats(self, request, context):
        stats = self._loads.get().cache.stats()
        return pb.GetCacheStatsResponse(stats=convert.stats_to_pb(stats))

    async def ListCachedModels(self, request, context):
        entries = self._loads.get().cache.entries()
        page, next_token = paging.paginate(entries, request.page_size, request.page_token, [])
        return pb.ListCachedModelsResponse(
            models=[convert.cached_to_pb(entry) for entry in page], next_page_token=next_token
        )

    async def UnloadModel(self, request, context):
        if not request.key:
            raise InvalidArgumentError("key is required", field="key")
        submodel = convert.submodel_from_pb(request.submodel_type)
        removed = self._loads.get().cache.unload(request.key, submodel)
        return pb.UnloadModelResponse(unloaded_count=removed.count, freed_bytes=removed.freed_bytes)

    async def ClearCache(self, request, context):
        removed = self._loads.get().cache.clear()
        return pb.ClearCacheResponse(
            unloaded_count=removed.count,
            freed_bytes=removed.freed_bytes,
            locked_count=removed.locked_count,
        )
