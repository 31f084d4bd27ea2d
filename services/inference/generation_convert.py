"""Conversions between GenerationService's messages and the generation domain: requests
in, generations, events and schedulers out."""

from __future__ import annotations

from typing import Any

from easel.inference.v1 import generation_service_pb2 as pb
from services.common.error_status import code_for
from services.common.errors import InvalidArgumentError
from services.common.proto_enums import EnumMap
from services.inference.generation.images import encode_png
from services.inference.generation.jobs import (
    Generation,
    GenerationCancelled,
    GenerationCompleted,
    GenerationFailed,
    GenerationProgress,
    GenerationQueued,
    GenerationStarted,
    GenerationStatus,
    OperationKind,
)
from services.inference.generation.requests import (
    CreateNoiseRequest,
    DecodeLatentsRequest,
    DenoiseLatentsRequest,
    EncodeImageRequest,
    EncodePromptRequest,
    GenerationOptions,
    GenerationRequest,
    ImageToImageRequest,
    LoraRef,
    TextToImageRequest,
    UpscaleRequest,
)
from services.inference.generation.schedulers import SchedulerSpec
from services.inference.generation.work import ImageResult
from services.inference.generations import GenerationSnapshot, WatchFilter
from services.inference.model_cache_convert import (
    ModelLoadEvent,
    event_envelope,
    model_load_event_to_pb,
    timestamp,
)
from services.inference.tensor_store_convert import tensor_info_to_pb
from services.inference.tensors.store import TensorInfo

STATUS = EnumMap(GenerationStatus, pb.GenerationStatus)
KIND = EnumMap(OperationKind, pb.OperationKind)
_FULL, _BASIC = pb.GENERATION_VIEW_FULL, pb.GENERATION_VIEW_BASIC
_PREVIEWS = {
    pb.PREVIEW_MODE_UNSPECIFIED: False,
    pb.PREVIEW_MODE_NONE: False,
    pb.PREVIEW_MODE_EVERY_STEP: True,
}


# --- requests ----------------------------------------------------------------------------


def generation_request(request: pb.CreateGenerationRequest) -> GenerationRequest:
    """The operation a CreateGenerationRequest asks for; none is INVALID_ARGUMENT."""
    which = request.WhichOneof("operation")
    if which is None:
        raise InvalidArgumentError("an operation is required", field="operation")
    return _OPERATIONS[which](getattr(request, which))


def generation_options(request: pb.CreateGenerationRequest) -> GenerationOptions:
    if request.preview not in _PREVIEWS:
        raise InvalidArgumentError("preview must name a PreviewMode value", field="preview")
    return GenerationOptions(
        session_id=request.session_id,
        invocation_id=request.invocation_id,
        preview=_PREVIEWS[request.preview],
    )


def _optional(message: Any, name: str) -> Any:
    return getattr(message, name) if message.HasField(name) else None


def _loras(message: Any) -> tuple[LoraRef, ...]:
    return tuple(LoraRef(lora.model_key, _optional(lora, "weight")) for lora in message.loras)


def _image_fields(message: pb.TextToImage | pb.ImageToImage) -> dict[str, Any]:
    """The fields TextToImage and ImageToImage share."""
    return dict(
        model_key=message.model_key,
        positive_prompt=message.positive_prompt,
        negative_prompt=message.negative_prompt,
        width=message.width,
        height=message.height,
        steps=message.steps,
        cfg_scale=_optional(message, "cfg_scale"),
        scheduler=message.scheduler,
        seed=_optional(message, "seed"),
        vae_key=message.vae_key,
        loras=_loras(message),
        embedding_keys=tuple(message.embedding_keys),
    )


def _text_to_image(message: pb.TextToImage) -> TextToImageRequest:
    return TextToImageRequest(**_image_fields(message))


def _image_to_image(message: pb.ImageToImage) -> ImageToImageRequest:
    return ImageToImageRequest(
        **_image_fields(message),
        init_image_png=message.init_image_png,
        strength=_optional(message, "strength"),
    )


def _upscale(message: pb.Upscale) -> UpscaleRequest:
    return UpscaleRequest(
        upscaler_model_key=message.upscaler_model_key,
        image_png=message.image_png,
        scale=_optional(message, "scale"),
    )


def _encode_prompt(message: pb.EncodePrompt) -> EncodePromptRequest:
    return EncodePromptRequest(
        model_key=message.model_key,
        prompt=message.prompt,
        loras=_loras(message),
        embedding_keys=tuple(message.embedding_keys),
    )


def _create_noise(message: pb.CreateNoise) -> CreateNoiseRequest:
    return CreateNoiseRequest(
        width=message.width, height=message.height, seed=_optional(message, "seed")
    )


def _denoise_latents(message: pb.DenoiseLatents) -> DenoiseLatentsRequest:
    return DenoiseLatentsRequest(
        model_key=message.model_key,
        positive_conditioning=message.positive_conditioning,
        negative_conditioning=message.negative_conditioning,
        noise=message.noise,
        latents=message.latents,
        steps=message.steps,
        cfg_scale=_optional(message, "cfg_scale"),
        scheduler=message.scheduler,
        denoising_start=message.denoising_start,
        denoising_end=_optional(message, "denoising_end"),
        loras=_loras(message),
    )


def _decode_latents(message: pb.DecodeLatents) -> DecodeLatentsRequest:
    return DecodeLatentsRequest(latents=message.latents, model_key=message.model_key)


def _encode_image(message: pb.EncodeImage) -> EncodeImageRequest:
    return EncodeImageRequest(image_png=message.image_png, model_key=message.model_key)


_OPERATIONS = {
    "text_to_image": _text_to_image,
    "image_to_image": _image_to_image,
    "upscale": _upscale,
    "encode_prompt": _encode_prompt,
    "create_noise": _create_noise,
    "denoise_latents": _denoise_latents,
    "decode_latents": _decode_latents,
    "encode_image": _encode_image,
}


def statuses(values: list[int]) -> list[GenerationStatus]:
    return STATUS.filter(values, "statuses")


def full_view(view: int, default_full: bool) -> bool:
    """Whether a response carries PNG bytes: the request's view, or the RPC's default."""
    if view == pb.GENERATION_VIEW_UNSPECIFIED:
        return default_full
    if view not in (_FULL, _BASIC):
        raise InvalidArgumentError("view must name a GenerationView value", field="view")
    return view == _FULL


def watch_filter(request: pb.WatchInferenceEventsRequest) -> WatchFilter:
    return WatchFilter(
        generation_ids=frozenset(request.generation_ids),
        session_ids=frozenset(request.session_ids),
        model_keys=frozenset(request.model_keys),
    )


# --- generations ---------------------------------------------------------------------------


def generation_to_pb(generation: Generation, full: bool = True) -> pb.Generation:
    message = pb.Generation(
        id=generation.id,
        status=STATUS.to_pb(generation.status),
        operation_kind=KIND.to_pb(generation.operation_kind),
        session_id=generation.context.session_id,
        invocation_id=generation.context.invocation_id,
        step=generation.step,
        total_steps=generation.total_steps,
        create_time=timestamp(generation.create_time),
    )
    if generation.start_time is not None:
        message.start_time.CopyFrom(timestamp(generation.start_time))
    if generation.end_time is not None:
        message.end_time.CopyFrom(timestamp(generation.end_time))
    if generation.status is GenerationStatus.COMPLETED:
        message.result.CopyFrom(result_to_pb(generation.result, full))
    if generation.error is not None:
        message.error_type = generation.error.reason
        message.error = generation.error.message
        message.error_code = code_for(generation.error).value[0]
    return message


def result_to_pb(result: ImageResult | TensorInfo, full: bool = True) -> pb.GenerationResult:
    if isinstance(result, TensorInfo):
        return pb.GenerationResult(tensor=tensor_info_to_pb(result))
    return pb.GenerationResult(
        image=pb.GeneratedImage(
            png=result.png if full else b"",
            width=result.width,
            height=result.height,
            seed=result.seed,
        )
    )


# --- events --------------------------------------------------------------------------------

_GENERATION_EVENTS = (
    GenerationSnapshot,
    GenerationQueued,
    GenerationStarted,
    GenerationProgress,
    GenerationCompleted,
    GenerationFailed,
    GenerationCancelled,
)
GenerationEvent = (
    GenerationSnapshot
    | GenerationQueued
    | GenerationStarted
    | GenerationProgress
    | GenerationCompleted
    | GenerationFailed
    | GenerationCancelled
)


def event_to_pb(event: GenerationEvent | ModelLoadEvent, dropped: int = 0) -> pb.InferenceEvent:
    """Any event of the process's bus in the InferenceEvent envelope."""
    if not isinstance(event, _GENERATION_EVENTS):
        return model_load_event_to_pb(event, dropped)
    message = event_envelope(event.context, event.time, dropped)
    match event:
        case GenerationSnapshot():
            message.generation_snapshot.generation.CopyFrom(generation_to_pb(event.generation))
        case GenerationQueued():
            message.generation_queued.operation_kind = KIND.to_pb(event.operation_kind)
        case GenerationStarted():
            message.generation_started.operation_kind = KIND.to_pb(event.operation_kind)
            message.generation_started.total_steps = event.total_steps
        case GenerationProgress():
            message.generation_progress.CopyFrom(_progress_to_pb(event))
        case GenerationCompleted():
            message.generation_completed.result.CopyFrom(result_to_pb(event.result))
        case GenerationFailed():
            message.generation_error.CopyFrom(
                pb.GenerationError(
                    error_type=event.error.reason,
                    error=event.error.message,
                    error_code=code_for(event.error).value[0],
                )
            )
        case GenerationCancelled():
            message.generation_cancelled.step = event.step
    return message


def _progress_to_pb(event: GenerationProgress) -> pb.GenerationProgress:
    progress = pb.GenerationProgress(step=event.step, total_steps=event.total_steps)
    if event.preview is not None:
        progress.preview.CopyFrom(
            pb.PreviewImage(
                png=encode_png(event.preview),
                width=event.preview.width,
                height=event.preview.height,
            )
        )
    return progress


# --- schedulers ----------------------------------------------------------------------------


def scheduler_to_pb(spec: SchedulerSpec) -> pb.SchedulerInfo:
    return pb.SchedulerInfo(
        name=spec.name, diffusers_class=spec.diffusers_class, description=spec.description
    )
