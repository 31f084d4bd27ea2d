"""The Python SDK: the four Easel services from Python, blocking or asyncio.

    from clients.sdk import AsyncEaselClient, EaselClient
    from clients.sdk.graphs import edge, graph, node
    from easel.invoker.v1 import queue_service_pb2

    with EaselClient() as client:  # the settings the services read (easel.yaml, EASEL_*)
        path = client.generate_image("a cat eating sushi", "outputs", steps=20, seed=1234)
        model = client.install_model("/path/to/model.safetensors", on_progress=print)
        sums = graph([node("two", "add", a=1, b=1), node("four", "mul", b=2)],
                     [edge("two.value", "four.a")])
        for event in client.run_graph(sums):
            print(event.node_id, event.WhichOneof("payload"))
        record = client.upload_image("photo.png")
        client.queue.GetQueueStatus(queue_service_pb2.GetQueueStatusRequest())  # any RPC

    async with AsyncEaselClient() as client:  # the same, awaited
        path = await client.generate_image("a cat eating sushi", "outputs")
        async for event in client.run_graph(sums): ...

Both clients expose the generated stubs as `downloads`, `model_records`,
`model_install`, `model_cache`, `generation`, `tensors`, `invocations`, `sessions`,
`queue` and `images`, and the helpers `generate_image`, `install_model`, `run_graph`,
`run_session`, `upload_image` and `download_image`.

Every call carries the bearer token (`auth_token`) and uses TLS when configured; a call
answered UNAVAILABLE is retried by gRPC itself (`retry_attempts`, backoff from 0.1 s); a
unary call without `timeout=` gets `call_timeout_s` (none by default), streams and
`Wait…` calls never do. A failure raises the `services.common.errors` class its status
stands for, with the server's reason, metadata and field violations (`NotFoundError`,
not `grpc.RpcError`); a job that ends badly raises `JobFailedError`.

Importing the SDK loads the generated stubs and a few shared modules only, never server
code.
"""

from clients.sdk.async_client import AsyncEaselClient
from clients.sdk.helpers import JobFailedError
from clients.sdk.settings import ClientSettings
from clients.sdk.sync_client import EaselClient

__all__ = ["AsyncEaselClient", "ClientSettings", "EaselClient", "JobFailedError"]
