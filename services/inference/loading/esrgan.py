"""ESRGAN-family upscalers (ESRGAN, Real-ESRGAN x4plus / x2plus, their community
fine-tunes): the RRDB network, sized from the file's own tensors.

`spandrel` recognises these architectures, but it imports torchvision, whose PyPI wheels
are CUDA builds that cannot load against a CPU build of torch (as CI runs); the RRDB
network is small and fixed, so it is built here instead. Both key layouts load: the
current one (`conv_first`, `body.N.rdbK.convJ`, `conv_up1`, `conv_hr`, `conv_last`) and
the original one (`model.0`, `model.1.sub.N.RDBK.convJ.0`, numbered upsampling convs).
Real-ESRGAN's x2 and x1 models take their input pixel-unshuffled (12 or 48 channels).
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch
from torch import nn
from torch.nn import functional as F

from services.common.model_taxonomy import BaseModelType, ModelFormat, ModelType
from services.inference.loading.registry import Loaded, ModelLoader, register
from services.inference.loading.weights import read_state_dict, unreadable

_OLD_BODY = re.compile(r"^model\.1\.sub\.(\d+)\.RDB(\d)\.conv(\d)\.0\.(weight|bias)$")
_OLD_CONV = re.compile(r"^model\.(\d+)\.(weight|bias)$")


class _DenseBlock(nn.Module):
    def __init__(self, features: int, growth: int) -> None:
        super().__init__()
        for index in range(1, 6):
            out = features if index == 5 else growth
            setattr(self, f"conv{index}", nn.Conv2d(features + (index - 1) * growth, out, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outputs = [x]
        for index in range(1, 5):
            conv = getattr(self, f"conv{index}")
            outputs.append(F.leaky_relu(conv(torch.cat(outputs, 1)), 0.2))
        return self.conv5(torch.cat(outputs, 1)) * 0.2 + x


class _ResidualInResidual(nn.Module):
    def __init__(self, features: int, growth: int) -> None:
        super().__init__()
        self.rdb1 = _DenseBlock(features, growth)
        self.rdb2 = _DenseBlock(features, growth)
        self.rdb3 = _DenseBlock(features, growth)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.rdb3(self.rdb2(self.rdb1(x))) * 0.2 + x


class RRDBUpscaler(nn.Module):
    """An RRDB upscaler; `scale` is its output size over its input size."""

    def __init__(
        self, in_channels: int, features: int, growth: int, blocks: int, upsamples: int
    ) -> None:
        super().__init__()
        self.unshuffle = {3: 1, 12: 2, 48: 4}[in_channels]
        self.scale = 2**upsamples // self.unshuffle
        self.conv_first = nn.Conv2d(in_channels, features, 3, 1, 1)
        self.body = nn.Sequential(*(_ResidualInResidual(features, growth) for _ in range(blocks)))
        self.conv_body = nn.Conv2d(features, features, 3, 1, 1)
        for index in range(1, upsamples + 1):
            setattr(self, f"conv_up{index}", nn.Conv2d(features, features, 3, 1, 1))
        self.upsamples = upsamples
        self.conv_hr = nn.Conv2d(features, features, 3, 1, 1)
        self.conv_last = nn.Conv2d(features, 3, 3, 1, 1)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """[N, 3, H, W] in 0..1 to [N, 3, H x scale, W x scale]."""
        x = F.pixel_unshuffle(image, self.unshuffle) if self.unshuffle > 1 else image
        features = self.conv_first(x)
        features = features + self.conv_body(self.body(features))
        for index in range(1, self.upsamples + 1):
            conv = getattr(self, f"conv_up{index}")
            features = F.leaky_relu(conv(F.interpolate(features, scale_factor=2.0)), 0.2)
        return self.conv_last(F.leaky_relu(self.conv_hr(features), 0.2))


def current_layout(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The tensors under the current key names, from either layout."""
    if "conv_first.weight" in state_dict:
        return dict(state_dict)
    renamed: dict[str, torch.Tensor] = {}
    convs: dict[int, dict[str, torch.Tensor]] = {}
    for key, tensor in state_dict.items():
        if body := _OLD_BODY.match(key):
            block, rdb, conv, kind = body.groups()
            renamed[f"body.{block}.rdb{rdb}.conv{conv}.{kind}"] = tensor
        elif conv_key := _OLD_CONV.match(key):
            convs.setdefault(int(conv_key[1]), {})[conv_key[2]] = tensor
        elif key.startswith("model.1.sub."):  # the trunk conv after the last block
            renamed[f"conv_body.{key.rsplit('.', 1)[1]}"] = tensor
    positions = sorted(convs)
    if not positions or positions[0] != 0 or len(positions) < 3:
        raise ValueError("not an ESRGAN state dict")
    names = ["conv_first"] + [f"conv_up{i}" for i in range(1, len(positions) - 2)]
    for name, position in zip([*names, "conv_hr", "conv_last"], positions, strict=True):
        for kind, tensor in convs[position].items():
            renamed[f"{name}.{kind}"] = tensor
    return renamed


def build_upscaler(state_dict: Mapping[str, torch.Tensor]) -> RRDBUpscaler:
    """The network a state dict describes, with its weights."""
    weights = current_layout(state_dict)
    first = weights["conv_first.weight"]
    blocks = len({key.split(".")[1] for key in weights if key.startswith("body.")})
    upsamples = len({key.split(".")[0] for key in weights if key.startswith("conv_up")})
    growth = weights["body.0.rdb1.conv1.weight"].shape[0]
    model = RRDBUpscaler(first.shape[1], first.shape[0], growth, blocks, upsamples)
    model.load_state_dict(weights, strict=True)
    return model


@register(base=BaseModelType.ANY, type=ModelType.UPSCALER, format=ModelFormat.CHECKPOINT)
class EsrganLoader(ModelLoader):
    """An ESRGAN-family upscaler file (`.safetensors`, or a pickled `.pth` / `.pt`)."""

    def load(self, record, submodel, options) -> Loaded:
        state_dict = read_state_dict(record.path)
        try:
            model = build_upscaler(state_dict)
        except (ValueError, KeyError, RuntimeError) as error:
            raise unreadable(record.path, f"not an ESRGAN upscaler: {error}") from error
        return Loaded(model.to(options.dtype).eval(), record.path)
