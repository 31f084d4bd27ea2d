"""Every loader Easel has: importing this module registers them all in `LOADERS`.

It also quiets diffusers' and transformers' per-load chatter (progress bars, advice to
install accelerate), which would otherwise interleave with the process's JSON log lines.
"""

import diffusers
import transformers

from services.inference.loading import (  # noqa: F401 - imported to register
    checkpoints,
    diffusers_folders,
    esrgan,
    lora,
    textual_inversion,
)
from services.inference.loading.registry import LOADERS

diffusers.utils.logging.set_verbosity_error()
diffusers.utils.logging.disable_progress_bar()
transformers.utils.logging.set_verbosity_error()
transformers.utils.logging.disable_progress_bar()

__all__ = ["LOADERS"]
