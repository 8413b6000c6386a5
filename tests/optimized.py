"""A hand-made ``<target>/optimized`` entry, as ``edgetl optimize`` promotes its pick: the files of
a compiled artifact copied into ``compiled/<target>/optimized/`` and recorded with its slot, threads
and variant, under a runtime that is not the profile's."""

from __future__ import annotations

import shutil

from edgetl.compiler import OPTIMIZED, CompiledEntry
from edgetl.rundir import RunDir


def promote(run: RunDir, source_key: str, target: str, *, threads: int | None = 1,
            variant: str = "fp32 pick") -> CompiledEntry:
    """Copy ``compiled[source_key]`` to ``<target>/optimized`` and record it; the new entry."""
    source = run.compiled_entry(source_key)
    dest = run.path / "compiled" / target / OPTIMIZED
    shutil.copytree(run.path / source.dir, dest)
    moved = lambda rel: f"compiled/{target}/{OPTIMIZED}/{rel.removeprefix(source.dir + '/')}"  # noqa: E731
    entry = CompiledEntry.model_validate({
        **source.fields(), "target": target, "dir": f"compiled/{target}/{OPTIMIZED}", "path": moved(source.path),
        "files": [moved(f) for f in source.files], "slot": OPTIMIZED, "threads": threads, "variant": variant,
        "estimate_with": None})
    run.record(dest)
    run.set_record(entry, f"{target}/{OPTIMIZED}")
    return entry
