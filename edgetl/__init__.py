"""edgetl: adapt a pretrained backbone, compile it for edge runtimes, bench it, ship it.

The stage functions are importable for notebooks; heavy dependencies load on first call.
"""

from __future__ import annotations

__version__ = "0.1.0"


def train(*args, **kwargs):
    from edgetl.adapt.train import train as _train

    return _train(*args, **kwargs)


def compile(*args, **kwargs):  # noqa: A001 - the stage's name; shadows the builtin only inside edgetl
    """``edgetl compile``: see ``edgetl.compiler.compile``."""
    from edgetl.compiler import compile as _compile

    return _compile(*args, **kwargs)


# ``edgetl.bench`` and ``edgetl.report`` are subpackages (importing one rebinds that attribute), so
# the stage functions get verb names that cannot clash.
def run_bench(*args, **kwargs):
    """``edgetl bench``: see ``edgetl.bench.run.bench``."""
    from edgetl.bench.run import bench as _bench

    return _bench(*args, **kwargs)


def make_report(*args, **kwargs):
    """``edgetl report``: see ``edgetl.report.make_report``."""
    from edgetl.report import make_report as _make_report

    return _make_report(*args, **kwargs)


def deploy(data, **options):
    """``edgetl deploy``: train -> compile -> bench -> report -> bundle; options as in DeployConfig."""
    from edgetl.pipeline import DeployConfig
    from edgetl.pipeline import deploy as _deploy

    return _deploy(DeployConfig(data=str(data), **options))
