"""How a bench measures: one settings object, its defaults in one place.

The local bench (``edgetl.bench.run``), a bundle benched on a device (``edgetl.bundle.runner``), the
remote and fleet bench (``edgetl.bundle.remote``), ``edgetl deploy`` and the CLI's ``--batch``,
``--threads``, ``--iterations`` and ``--duration`` all read their defaults from ``BenchSettings``. The
result document records the settings it ran with (its ``settings`` field: this model, dumped).
Pydantic only, so a device can import it without numpy's harness.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, ValidationError, field_validator, model_validator

from edgetl.config import MAX_THREADS
from edgetl.errors import ConfigError

MAX_ITERATIONS = 10_000_000  # timed calls per batch size: more would run for days even at 10 µs each


class BenchSettings(BaseModel):
    """Batch sizes, threads and the timing rule of one bench (see ``edgetl.bench.latency``)."""

    # no NaN or infinity: `--duration inf` would time one batch size for ever, and NaN compares false
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    batches: tuple[int, ...] = (1,)
    threads: int | None = None  # None: the machine's (or the bundle's profile's) choice, resolved when benching
    iterations: int = 200
    duration_s: float | None = None  # time each batch size for this long instead of ``iterations``
    warmup_iters: int = 50
    warmup_s: float = 0.2
    isolated: bool = True  # each artifact in a fresh process (a bundle on a device: in this one)

    FLAGS: ClassVar[dict[str, str]] = {"batches": "--batch", "threads": "--threads", "iterations": "--iterations",
                                       "duration_s": "--duration", "isolated": "--isolated"}

    @field_validator("batches", mode="before")
    @classmethod
    def _unique_batches(cls, value: Any) -> Any:
        if isinstance(value, (list, tuple)) and all(isinstance(b, int) for b in value):
            if not value or any(b < 1 for b in value):
                raise ValueError("batch sizes must be integers >= 1, e.g. --batch 1,8")
            return tuple(dict.fromkeys(value))  # a batch named twice is measured once
        return value

    @field_validator("threads")
    @classmethod
    def _positive_threads(cls, value: int | None) -> int | None:
        if value is not None and not 1 <= value <= MAX_THREADS:
            raise ValueError(f"must be from 1 to {MAX_THREADS}")
        return value

    @field_validator("duration_s")
    @classmethod
    def _positive_duration(cls, value: float | None) -> float | None:
        if value is not None and value <= 0:
            raise ValueError("must be > 0 seconds")
        return value

    @field_validator("warmup_iters", "warmup_s")
    @classmethod
    def _nonnegative(cls, value: float) -> float:
        if value < 0:
            raise ValueError("must be >= 0")
        return value

    @model_validator(mode="after")
    def _iterations_when_counted(self) -> BenchSettings:
        if self.duration_s is None and not 1 <= self.iterations <= MAX_ITERATIONS:
            raise ValueError(f"iterations: must be from 1 to {MAX_ITERATIONS:,} (200 or more for a stable p99)")
        return self

    @classmethod
    def parse(cls, base: BenchSettings | None = None, **values: Any) -> BenchSettings:
        """``base`` (default: the defaults) with the given values over it (``None`` = not given);
        a bad value is one ``ConfigError`` line naming the option, as the CLI spells it."""
        given = {k: v for k, v in values.items() if v is not None}
        try:
            return cls.model_validate({**(base.model_dump() if base else {}), **given})
        except ValidationError as exc:
            raise ConfigError(_message(exc, {**(base.model_dump() if base else {}), **given})) from None

    def with_threads(self, threads: int) -> BenchSettings:
        """The same settings with the thread count resolved (what a result document records)."""
        return self.model_copy(update={"threads": threads})

    def record(self) -> dict[str, Any]:
        """The result document's ``settings`` (JSON: batches as a list)."""
        return {**self.model_dump(), "batches": list(self.batches)}

    def argv(self) -> list[str]:
        """The same settings as ``edgetl bench`` options, for a device's own edgetl."""
        argv = ["--batch", ",".join(map(str, self.batches))]
        argv += ["--duration", str(self.duration_s)] if self.duration_s is not None else ["--iterations", str(self.iterations)]
        return argv + (["--threads", str(self.threads)] if self.threads else [])


DEFAULTS = BenchSettings()


def _message(exc: ValidationError, values: dict[str, Any]) -> str:
    first = exc.errors()[0]
    msg = first["msg"].removeprefix("Value error, ")
    field = str(first["loc"][0]) if first["loc"] else msg.split(":", 1)[0]
    if not first["loc"]:  # a rule over several fields names its field first
        msg = msg.split(": ", 1)[-1]
    value = values.get(field)
    shown = ",".join(map(str, value)) if isinstance(value, Sequence) and not isinstance(value, str) else value
    return f"{BenchSettings.FLAGS.get(field, '--' + field.replace('_', '-'))} {shown}: {msg}"
