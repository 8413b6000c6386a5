"""The search space of one target: every runtime that can serve the profile's device, times the
variants that runtime declares for it (``Backend.variants``), each with the profile's calibration
recipe under the variant's overrides. Nothing here knows a runtime by name: a runtime joins the
search through its plugin."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

from edgetl._cpu import target_cpu
from edgetl.backends import get_backend, runtimes
from edgetl.backends.base import SearchDevice, Variant
from edgetl.compiler import Cell
from edgetl.config import CalibrationRecipe, TargetProfile, load_recipe
from edgetl.errors import ConfigError, UnknownNameError


@dataclasses.dataclass(frozen=True)
class Candidate:
    """One artifact to build: a runtime's variant with its recipe (int8) and the layers kept float."""

    runtime: str
    variant: Variant
    recipe: CalibrationRecipe | None  # int8 only: profile recipe + variant.recipe (+ keep_float_nodes)
    keep_float: tuple[str, ...] = ()  # fallback: ONNX nodes kept float (also in recipe.keep_float_nodes)

    @property
    def label(self) -> str:
        kept = f" +{len(self.keep_float)} float" if self.keep_float else ""
        return f"{self.runtime} {self.variant.label}{kept}"

    @property
    def recipe_label(self) -> str | None:
        """``percentile`` or ``percentile+symmetric_activations``: the recipe and what the variant changed."""
        if self.recipe is None:
            return None
        changed = [k for k in self.variant.recipe if k not in ("keep_float_nodes", "name")]
        return "+".join([self.recipe.name, *(_override_text(k, self.variant.recipe[k]) for k in changed)])

    def cell(self, target: str, profile_options: dict[str, Any]) -> Cell:
        """What the compiler builds: the profile's options this runtime takes, the variant's over them."""
        model_fields = get_backend(self.runtime).options_model.model_fields
        options = {k: v for k, v in profile_options.items() if k in model_fields}
        return Cell(target, self.runtime, self.variant.precision, self.recipe, {**options, **self.variant.options}, None)

    def with_recipe(self, overrides: dict[str, Any], label: str) -> Candidate:
        """The same runtime and precision under other recipe fields (recovery: another calibration method)."""
        variant = dataclasses.replace(self.variant, label=f"{self.variant.label} {label}",
                                      recipe={**self.variant.recipe, **overrides})
        return dataclasses.replace(self, variant=variant, recipe=_merged(self.recipe, overrides))

    def keeping_float(self, nodes: Sequence[str]) -> Candidate:
        """The same candidate with ``nodes`` left in float (the fallback)."""
        recipe = _merged(self.recipe, {"keep_float_nodes": sorted({*self.recipe.keep_float_nodes, *nodes})})
        return dataclasses.replace(self, recipe=recipe, keep_float=tuple(nodes))


def _override_text(key: str, value: Any) -> str:
    if value is True:
        return key
    if value is False:
        return f"no-{key}"
    return f"{key}={value}"


def _merged(recipe: CalibrationRecipe, overrides: dict[str, Any]) -> CalibrationRecipe:
    try:
        return CalibrationRecipe.model_validate({**recipe.model_dump(), **overrides})
    except ValueError as exc:  # a variant's override the recipe model refuses: a backend's bug, said in one line
        raise ConfigError(f"recipe override {overrides}: {str(exc).splitlines()[-1]}") from None


def serving_runtimes(profile: TargetProfile, wanted: Sequence[str] | None,
                     usable: Callable[[Any], str | None]) -> tuple[list[str], list[str]]:
    """(the runtimes searched, why each other installed runtime serving the device is not).

    ``wanted``: ``--runtimes`` (every registered runtime when None). ``usable(backend)``: None when
    the timer can measure this runtime's artifacts, else why not."""
    names = list(runtimes())
    for name in wanted or []:
        if name not in names:
            raise UnknownNameError("runtime", name, names)
        if profile.device not in get_backend(name).devices:
            raise ConfigError(f"runtime {name!r} does not serve device {profile.device!r} of target {profile.name!r} "
                              f"(it runs on {', '.join(get_backend(name).devices)}): drop it from --runtimes")
    chosen, skipped = [], []
    for name in wanted or names:
        backend = get_backend(name)
        if profile.device not in backend.devices:
            continue
        why = usable(backend)
        if why is None:
            chosen.append(name)
        else:
            skipped.append(f"{name}: {why}")
    if not chosen:
        reasons = "; ".join(skipped) or "no registered runtime runs on it"
        raise ConfigError(f"no runtime that can be measured here serves device {profile.device!r} of target "
                          f"{profile.name!r} ({reasons})")
    return chosen, skipped


def candidates(profile: TargetProfile, names: Sequence[str], hint_of: Callable[[str], dict]) -> list[Candidate]:
    """Every variant of every runtime in ``names`` for the profile's device. ``hint_of(runtime)``:
    the task's int8 hint for that runtime (``Task.quantization``)."""
    recipe = load_recipe(profile.calibration)
    out = []
    for name in names:
        device = SearchDevice(profile.device, target_cpu(profile.options), hint_of(name), dict(profile.options))
        for variant in get_backend(name).variants(device):
            merged = _merged(recipe, dict(variant.recipe)) if variant.precision == "int8" else None
            out.append(Candidate(name, variant, merged))
    return out
