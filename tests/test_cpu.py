"""The one CPU-flags parser (edgetl/_cpu.py) and the system record built on it, fed fixed
/proc/cpuinfo texts of the CPUs whose flags change what int8 is built for."""

from __future__ import annotations

import pytest

from edgetl._cpu import FLAGS_OF_INTEREST, parse_cpu_flags, target_cpu
from edgetl.bench.system import cpu_record

# A virtualised Sapphire Rapids: AVX-512 VNNI and AMX (int8 dot products without saturation).
X86_VNNI = """processor\t: 0
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) Platinum 8480+
flags\t\t: fpu vme sse sse2 ssse3 avx avx2 fma f16c avx512f avx512bw avx512vl avx512_vnni avx512_bf16 amx_tile amx_int8 hypervisor
bugs\t\t: spectre_v1

processor\t: 1
model name\t: another core
flags\t\t: fpu
"""
# A Haswell-era desktop: AVX2 but no VNNI (u8 x s8 products saturate in int16).
X86_AVX2 = """processor\t: 0
vendor_id\t: GenuineIntel
model name\t: Intel(R) Core(TM) i7-4770 CPU @ 3.40GHz
flags\t\t: fpu vme sse sse2 ssse3 sse4_1 sse4_2 avx avx2 fma f16c
"""
# A Raspberry Pi 5 (Cortex-A76): ARM dot products (asimddp); the model is on the last line.
AARCH64_DOTPROD = """processor\t: 0
BogoMIPS\t: 108.00
Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp
CPU implementer\t: 0x41
CPU part\t: 0xd0b

processor\t: 1
Features\t: fp

Revision\t: d04170
Model\t\t: Raspberry Pi 5 Model B Rev 1.0
"""

CASES = {
    "x86-vnni": (X86_VNNI, "Intel(R) Xeon(R) Platinum 8480+", True,
                 ["avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx512_bf16",
                  "amx_tile", "amx_int8"]),
    "x86-avx2": (X86_AVX2, "Intel(R) Core(TM) i7-4770 CPU @ 3.40GHz", False, ["avx", "avx2", "fma", "f16c"]),
    "aarch64-dotprod": (AARCH64_DOTPROD, "Raspberry Pi 5 Model B Rev 1.0", False, ["asimd", "asimddp", "asimdhp"]),
}


def test_the_first_flags_or_features_line_is_read_whole():
    assert parse_cpu_flags(X86_AVX2) == {"fpu", "vme", "sse", "sse2", "ssse3", "sse4_1", "sse4_2", "avx", "avx2",
                                         "fma", "f16c"}
    assert "fpu" in parse_cpu_flags(X86_VNNI) and "amx_int8" in parse_cpu_flags(X86_VNNI)  # processor 0's line
    assert parse_cpu_flags(AARCH64_DOTPROD) >= {"fp", "asimd", "asimddp"}
    assert not parse_cpu_flags(AARCH64_DOTPROD) & {"0x41", "0xd0b", "108.00"}  # other lines' values
    assert parse_cpu_flags("") == set() and parse_cpu_flags("processor\t: 0\nmodel name\t: x\n") == set()


@pytest.mark.parametrize("case", CASES)
def test_the_system_record_reads_model_and_flags_from_the_text(case):
    text, model, virtualized, flags = CASES[case]
    record = cpu_record(text)
    assert record["model"] == model
    assert record["flags"] == flags  # in FLAGS_OF_INTEREST's order, nothing else
    assert record["virtualized"] is virtualized


@pytest.mark.parametrize(("case", "arch", "vnni", "is_arm"), [
    ("x86-vnni", "x86_64", {"avx512_vnni", "amx_int8"}, False),
    ("x86-avx2", "x86_64", set(), False),
    ("aarch64-dotprod", "aarch64", set(), True),
])
def test_a_profile_built_from_the_text_describes_that_cpu(case, arch, vnni, is_arm):
    flags = sorted(parse_cpu_flags(CASES[case][0]))
    cpu = target_cpu({"cpu_arch": arch, "cpu_flags": flags})
    assert (cpu.source, cpu.vnni, cpu.is_arm) == ("the target profile", vnni, is_arm)
    assert cpu.record() == {"arch": arch, "flags": CASES[case][3], "from": "the target profile"}
    assert set(cpu.record()["flags"]) <= set(FLAGS_OF_INTEREST)
