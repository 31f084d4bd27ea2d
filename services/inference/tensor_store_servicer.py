"""TensorStoreService over gRPC: each RPC is one call into the tensor store."""

from __future__ import annotations

from grpc import aio

from easel.inference.v1 import tensor_store_service_pb2 as pb
from easel.inference.v1 import tensor_store_service_pb2_grpc
from services.common import paging
from services.inference import tensor_store_convert as convert
from services.inference.pending import Pending
from services.inference.tensors.store import TensorStore


class TensorStoreServicer(tensor_store_service_pb2_grpc.TensorStoreServiceServicer):
    def __init__(self, tensors: Pending[TensorStore]) -> None:
        self._tensors = tensors

    async def GetTensor(
        self, request: pb.GetTensorRequest, context: aio.ServicerContext
    ) -> pb.GetTensorResponse:
        info = self._tensors.get().info(request.name)
        return pb.GetTensorResponse(tensor=convert.tensor_info_to_pb(info))

    async def ListTensors(
        self, request: pb.ListTensorsRequest, context: aio.ServicerContext
    ) -> pb.ListTensorsResponse:
        kind = convert.kind_filter(request.kind)
        infos = self._tensors.get().list(kind, request.session_id)
        fingerprint = [str(kind or ""), request.session_id]
        page, next_token = paging.paginate(
            infos, request.page_size, request.page_token, fingerprint
        )
        return pb.ListTensorsResponse(
            tensors=[convert.tensor_info_to_pb(info) for info in page],
            next_page_token=next_token,
        )

    async def DeleteTensor(
        self, request: pb.DeleteTensorRequest, context: aio.ServicerContext
    ) -> pb.DeleteTensorResponse:
        return pb.DeleteTensorResponse(freed_bytes=self._tensors.get().delete(request.name))
