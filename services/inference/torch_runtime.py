"""The torch side of the inference process: imported once, while health says NOT_SERVING.

torch takes seconds to import; doing it after the server started means a client polling
health sees NOT_SERVING (not a refused connection) until inference can really work.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import structlog

from services.common.errors import FailedPreconditionError
from services.inference.settings import DeviceChoice, InferenceSettings, PrecisionChoice

if TYPE_CHECKING:
    import torch

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class TorchRuntime:
    """The device models run on, the data type their weights take, and the torch version.

    `device` is the execution device as torch names it ("cuda:0" or "cpu"); `dtype` is the
    precision setting resolved for that device.
    """

    device: str
    dtype: torch.dtype
    torch_version: str

    @property
    def is_cuda(self) -> bool:
        return self.device.startswith("cuda")


def start_torch(settings: InferenceSettings) -> TorchRuntime:
    """Import torch, apply the thread setting, choose the device and the precision."""
    import torch

    if settings.torch_threads is not None:
        torch.set_num_threads(settings.torch_threads)
    cuda = torch.cuda.is_available()
    if settings.device is DeviceChoice.CUDA and not cuda:
        raise FailedPreconditionError("device is set to cuda but no CUDA device is available")
    device = (
        f"cuda:{torch.cuda.current_device()}"
        if settings.device is not DeviceChoice.CPU and cuda
        else "cpu"
    )
    runtime = TorchRuntime(
        device=device,
        dtype=resolve_dtype(settings.precision, device),
        torch_version=torch.__version__,
    )
    log.info(
        "torch ready",
        device=device,
        precision=dtype_name(runtime.dtype),
        torch=runtime.torch_version,
        threads=torch.get_num_threads(),
    )
    return runtime


def resolve_dtype(precision: PrecisionChoice, device: str) -> torch.dtype:
    """The weights' data type: `auto` is float16 on an accelerator and float32 on the CPU,
    where half-precision kernels are slow or missing."""
    import torch

    if precision is PrecisionChoice.AUTO:
        return torch.float32 if device == "cpu" else torch.float16
    return {
        PrecisionChoice.FP32: torch.float32,
        PrecisionChoice.FP16: torch.float16,
        PrecisionChoice.BF16: torch.bfloat16,
    }[precision]


def dtype_name(dtype: torch.dtype) -> str:
    """A data type as the API names it: "float16", not "torch.float16"."""
    return str(dtype).removeprefix("torch.")
