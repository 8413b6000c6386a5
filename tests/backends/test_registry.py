"""The runtime registry: every registered runtime carries every fact the rest of edgetl asks it."""

from __future__ import annotations

import pytest
from pydantic import BaseModel

from edgetl._cpu import parse_cpu_flags, target_cpu
from edgetl.backends import get_backend, runtimes
from edgetl.backends.onnxruntime import choose_int8_types
from edgetl.config import TargetProfile
from edgetl.errors import UnknownNameError
from tests.backends.plugin import install, registered

DEVICES = set(TargetProfile.model_fields["device"].annotation.__args__)


def _check_complete(backend) -> None:
    assert isinstance(backend.name, str) and backend.name
    assert backend.precisions and set(backend.precisions) <= {"fp32", "fp16", "int8"}
    assert isinstance(backend.extra, str) and backend.extra
    assert backend.modules and all(isinstance(m, str) for m in backend.modules)
    assert backend.min_versions and all(isinstance(v, str) for v in backend.min_versions.values())
    assert backend.distributions
    assert backend.devices and set(backend.devices) <= DEVICES
    assert isinstance(backend.runs_on, str) and backend.runs_on
    assert issubclass(backend.options_model, BaseModel)
    assert backend.options_model.model_config.get("extra") == "forbid"  # a typo in a profile is reported
    assert isinstance(backend.builds_on_device, bool)
    colour, marker = backend.plot_style
    assert colour.startswith("#") and marker
    for method in ("available", "can_run_here", "version", "compile", "load", "bundle_files", "build_settings",
                   "prepare", "fingerprint"):
        assert callable(getattr(backend, method)), method
    if backend.available():  # the flavour version() names has a minimum (require_runtime checks it)
        *flavour, _ = backend.version().split()
        assert (flavour[0] if flavour else backend.name) in backend.min_versions


@pytest.mark.parametrize("name", runtimes())
def test_every_registered_runtime_is_complete(name):
    backend = get_backend(name)
    assert backend.name == name  # the entry point's name is the runtime's
    _check_complete(backend)


def test_the_built_in_runtimes_are_entry_points():
    assert {"onnxruntime", "openvino", "tensorrt"} <= set(runtimes())
    with pytest.raises(UnknownNameError, match="Did you mean 'openvino'"):
        get_backend("openvno")


def test_a_plugin_joins_and_leaves_the_registry(tmp_path):
    site = install(tmp_path / "site")
    assert "ortwrap" not in runtimes()
    with registered(site):
        assert "ortwrap" in runtimes()
        _check_complete(get_backend("ortwrap"))
    assert "ortwrap" not in runtimes()


X86_CPUINFO = """processor\t: 0
vendor_id\t: GenuineIntel
model name\t: 13th Gen Intel(R) Core(TM) i5-1340P
flags\t\t: fpu vme sse sse2 avx avx2 fma f16c avx_vnni
bugs\t\t: spectre_v1

processor\t: 1
flags\t\t: fpu other
"""
PI5_CPUINFO = """processor\t: 0
BogoMIPS\t: 108.00
Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp
CPU implementer\t: 0x41
CPU part\t: 0xd0b
"""


def test_cpu_flags_come_from_the_first_flags_or_features_line():
    assert parse_cpu_flags(X86_CPUINFO) == {"fpu", "vme", "sse", "sse2", "avx", "avx2", "fma", "f16c", "avx_vnni"}
    assert {"asimd", "asimddp"} <= parse_cpu_flags(PI5_CPUINFO) and "0x41" not in parse_cpu_flags(PI5_CPUINFO)
    assert parse_cpu_flags("") == set()


@pytest.mark.parametrize(
    ("cpuinfo", "arch", "activations", "reduce_range"),
    [(PI5_CPUINFO, "aarch64", "int8", False), (X86_CPUINFO, "x86_64", "uint8", False)],
)
def test_int8_types_follow_the_profiles_cpu_not_the_hosts(cpuinfo, arch, activations, reduce_range):
    cpu = target_cpu({"cpu_arch": arch, "cpu_flags": sorted(parse_cpu_flags(cpuinfo))})
    assert cpu.source == "the target profile"
    chosen = choose_int8_types(set(cpu.flags), cpu.arch)
    assert (chosen["activations"], chosen["weights"], chosen["reduce_range"]) == (activations, "int8", reduce_range)


def test_without_a_cpu_in_the_profile_the_host_decides_and_is_fingerprinted():
    assert target_cpu({}).source == "this workstation"
    backend = get_backend("onnxruntime")
    assert backend.fingerprint({})["cpu"]["from"] == "this workstation"  # another machine rebuilds
    pi = {"cpu_arch": "aarch64", "cpu_flags": ["asimd", "asimddp"]}
    assert backend.fingerprint(pi)["cpu"] == {"arch": "aarch64", "flags": ["asimd", "asimddp"], "from": "the target profile"}
    assert get_backend("tensorrt").fingerprint({"gpu_arch": "sm87"}) == {"gpu_arch": "sm87"}


def test_an_install_without_the_entry_points_is_one_line_saying_reinstall(monkeypatch):
    from click.testing import CliRunner

    import edgetl._plugins as plugins
    from edgetl.cli import cli

    monkeypatch.setattr(plugins, "entry_points", lambda group: [])
    plugins._scan.cache_clear()
    try:
        runtimes = CliRunner().invoke(cli, ["targets"])
        tasks = CliRunner().invoke(cli, ["tasks"])
    finally:
        plugins._scan.cache_clear()
    for result, what in ((runtimes, "runtimes"), (tasks, "tasks")):
        assert result.exit_code == 2 and "Traceback" not in result.output
        assert f"no {what} are registered" in result.output
        assert "reinstall it (pip install -e . in a checkout)" in result.output


def test_a_plugin_that_cannot_be_imported_is_one_line_naming_it(tmp_path):
    """A third party's runtime or task whose module fails to import: one line and exit 2, not a traceback."""
    from click.testing import CliRunner

    from edgetl.cli import cli
    from tests.backends.plugin import registered

    site = tmp_path / "site"
    info = site / "broken_plugin-0.1.dist-info"
    info.mkdir(parents=True)
    (site / "broken_plugin.py").write_text("import a_module_that_is_not_installed\n")
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: broken-plugin\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[edgetl.backends]\nbrokenrt = broken_plugin:Backend\n"
                                           "[edgetl.tasks]\nbroken-task = broken_plugin:Task\n")
    with registered(site):
        for args in (["targets"], ["tasks"]):
            result = CliRunner().invoke(cli, args)
            assert result.exit_code == 2, result.output
            lines = result.output.strip().splitlines()
            assert len(lines) == 1 and "Traceback" not in result.output, result.output
            assert "(broken_plugin:" in lines[0] and "cannot be imported: No module named " in lines[0]
