"""The torch side of the inference process: imported once, while health says NOT_SERVING.

torch takes seconds to import; doing it after the server started means a client polling
health sees NOT_SERVING (not a refused connection) until inference can really work.
"""

from __future__ import annotations

from dataclasses import dataclass

import structlog

from services.common.errors import FailedPreconditionError
from services.inference.settings import DeviceChoice, InferenceSettings

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class TorchRuntime:
    """The device models run on, and the torch version serving them."""

    device: str
    torch_version: str


def start_torch(settings: InferenceSettings) -> TorchRuntime:
    """Import torch, apply the thread setting and choose the device."""
    import torch

    if settings.torch_threads is not None:
        torch.set_num_threads(settings.torch_threads)
    cuda = torch.cuda.is_available()
    if settings.device is DeviceChoice.CUDA and not cuda:
        raise FailedPreconditionError("device is set to cuda but no CUDA device is available")
    device = "cuda" if settings.device is not DeviceChoice.CPU and cuda else "cpu"
    runtime = TorchRuntime(device=device, torch_version=torch.__version__)
    log.info(
        "torch ready", device=device, torch=runtime.torch_version, threads=torch.get_num_threads()
    )
    return runtime
