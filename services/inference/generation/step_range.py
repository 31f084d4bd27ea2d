"""Which steps of a schedule run: the one rounding rule for strength and denoising ranges.

Fractions arrive as float32 (0.7 arrives as 0.699999988), so a plain floor(10 x 0.7)
would run 6 steps. Every fraction is first rounded to 6 decimal places and the step
arithmetic is then done exactly, in integers:

- a range [start, end) of a `steps`-step schedule runs the steps with index i,
  ceil(steps x start) <= i < ceil(steps x end);
- image-to-image with strength s is the range [1 - s, 1): floor(steps x s) steps, the
  last ones of the schedule.

The two agree exactly (ceil(n x (1 - s)) = n - floor(n x s)), so DenoiseLatents with
denoising_start = 1 - s reproduces ImageToImage step for step, and two ranges that meet
([0, 0.8) then [0.8, 1)) split a schedule without dropping or repeating a step.
"""

from __future__ import annotations

from dataclasses import dataclass

from services.common.errors import InvalidArgumentError

FRACTION_DECIMALS = 6
_UNIT = 10**FRACTION_DECIMALS
MAX_STEPS = 1000


@dataclass(frozen=True)
class StepRange:
    """Steps `first` (inclusive) to `stop` (exclusive) of a `steps`-step schedule."""

    steps: int
    first: int
    stop: int

    @property
    def count(self) -> int:
        """Denoising steps that run."""
        return self.stop - self.first

    @property
    def starts_from_noise(self) -> bool:
        return self.first == 0


def _units(fraction: float) -> int:
    """`fraction` in millionths, rounded to the nearest: the exact value the rule uses."""
    return round(fraction * _UNIT)


def _ceil_share(steps: int, units: int) -> int:
    return -(-steps * units // _UNIT)


def check_steps(steps: int, field: str) -> None:
    if not 1 <= steps <= MAX_STEPS:
        raise InvalidArgumentError(f"steps must be 1 to {MAX_STEPS}, got {steps}", field=field)


def denoising_range(
    steps: int, start: float, end: float, *, start_field: str, end_field: str
) -> StepRange:
    """The steps between the fractions `start` and `end` of the schedule (module doc)."""
    start_units, end_units = _units(start), _units(end)
    if not 0 <= start_units < _UNIT:
        raise InvalidArgumentError(
            f"denoising_start must be at least 0 and less than 1, got {start}", field=start_field
        )
    if not start_units < end_units <= _UNIT:
        raise InvalidArgumentError(
            f"denoising_end must be greater than denoising_start ({start}) and at most 1, "
            f"got {end}",
            field=end_field,
        )
    first, stop = _ceil_share(steps, start_units), _ceil_share(steps, end_units)
    if stop == first:
        raise InvalidArgumentError(
            f"the range {start} to {end} of a {steps}-step schedule holds no step; "
            "widen it or raise steps",
            field=end_field,
        )
    return StepRange(steps=steps, first=first, stop=stop)


def strength_range(steps: int, strength: float, *, field: str) -> StepRange:
    """The last floor(steps x strength) steps: image-to-image's share of the schedule."""
    strength_units = _units(strength)
    if not 0 < strength_units <= _UNIT:
        raise InvalidArgumentError(
            f"strength must be greater than 0 and at most 1, got {strength}", field=field
        )
    count = steps * strength_units // _UNIT
    if count < 1:
        raise InvalidArgumentError(
            f"floor(steps x strength) = floor({steps} x {strength}) runs no step; "
            "raise strength or steps",
            field=field,
        )
    return StepRange(steps=steps, first=steps - count, stop=steps)
