"""Entry point of the fresh process that ``edgetl.bench.measure.measure_isolated`` starts.

``python -m edgetl.bench._child FD JOB_JSON``: measures, and writes JSON lines to file descriptor
FD: ``["progress", phase, done, total]``..., then ``["result", {...}]`` or
``["error", module, class, message, traceback]``.
"""

from __future__ import annotations

import json
import os
import sys
import traceback

import numpy as np


def main(fd: int, job: dict) -> None:
    from edgetl.bench.measure import measure, resolve_loader

    with os.fdopen(fd, "w", encoding="utf-8") as out:

        def send(*msg) -> None:
            out.write(json.dumps(msg) + "\n")
            out.flush()

        try:
            data = job["data"]
            mapped = lambda files: {name: np.load(path, mmap_mode="r") for name, path in files.items()}  # noqa: E731
            labels = np.load(data["labels"], mmap_mode="r") if data.get("labels") else None
            reference = mapped(data["reference"]) if data.get("reference") else None
            load = resolve_loader(job["loader"])(**job["kwargs"])  # imports happen here, untimed
            result = measure(load, mapped(data["inputs"]), labels, reference,
                             progress=lambda *p: send("progress", *p), **job["settings"])
            result["memory"]["isolated"] = True
            send("result", result)
        except BaseException as exc:  # the parent decides what a failure means
            send("error", type(exc).__module__, type(exc).__name__, str(exc), traceback.format_exc())


if __name__ == "__main__":
    main(int(sys.argv[1]), json.loads(sys.argv[2]))
