"""CPU facts for benchmark reports and the INT8 speed check: this machine's real /proc/cpuinfo, and the
/proc/cpuinfo layouts of the boards this agent targets (ARM, other x86 generations) that CI does not have."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from agent.inference.runtime.cpu import ARM_FLAGS, X86_FLAGS, CpuInfo, cpu_info, cpu_model, parse_cpuinfo

ROOT = Path(__file__).resolve().parent.parent

PI4_64 = """processor\t: 0
BogoMIPS\t: 108.00
Features\t: fp asimd evtstrm crc32 cpuid
CPU implementer\t: 0x41
CPU architecture: 8
CPU variant\t: 0x0
CPU part\t: 0xd08
CPU revision\t: 3

processor\t: 1
BogoMIPS\t: 108.00
Features\t: fp asimd evtstrm crc32 cpuid
CPU implementer\t: 0x41
CPU part\t: 0xd08

Hardware\t: BCM2835
Revision\t: c03114
Model\t\t: Raspberry Pi 4 Model B Rev 1.4
"""

PI5 = """processor\t: 0
BogoMIPS\t: 108.00
Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp
CPU implementer\t: 0x41
CPU part\t: 0xd0b

Revision\t: d04170
Model\t\t: Raspberry Pi 5 Model B Rev 1.0
"""

ORIN = """processor\t: 0
model name\t: ARMv8 Processor rev 1 (v8l)
BogoMIPS\t: 62.50
Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp
CPU implementer\t: 0x41
CPU part\t: 0xd42
"""

NEOVERSE_V1 = """processor\t: 0
BogoMIPS\t: 2100.00
Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm jscvt fcma lrcpc \
dcpop sha3 sm3 sm4 asimddp sha512 sve asimdfhm dit uscat ilrcpc flagm ssbs paca pacg dcpodp svei8mm svebf16 \
i8mm bf16 dgh rng
CPU implementer\t: 0x41
CPU part\t: 0xd40
"""

PI3_32 = """processor\t: 0
model name\t: ARMv7 Processor rev 4 (v7l)
BogoMIPS\t: 38.40
Features\t: half thumb fastmult vfp edsp neon vfpv3 tls vfpv4 idiva idivt vfpd32 lpae evtstrm crc32
CPU implementer\t: 0x41
CPU part\t: 0xd03

Hardware\t: BCM2835
Model\t\t: Raspberry Pi 3 Model B Rev 1.2
"""


def _x86(model: str, flags: str) -> str:
    head = "processor\t: 0\nvendor_id\t: GenuineIntel\nmodel\t\t: 142\n"
    return f"{head}model name\t: {model}\nflags\t\t: {flags}\n"


def test_this_machine_from_its_real_cpuinfo() -> None:
    info = cpu_info()
    text = Path("/proc/cpuinfo").read_text()
    model = next(line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("model name"))
    flags = set(next(line for line in text.splitlines() if line.startswith("flags")).split(":", 1)[1].split())
    assert info.arch == "x86-64" and info.model == model == cpu_model()
    assert info.flags == tuple(f for f in X86_FLAGS if f in flags) and info.flags_known
    assert info.kind.startswith("x86-64") and info.kind in info.describe() and model in info.describe()
    assert json.loads(json.dumps(info.as_dict()))["flags"] == list(info.flags)
    if "avx512_vnni" in flags and "amx_int8" not in flags:
        assert info.kind == "x86-64 AVX-512 VNNI"


def test_x86_generations() -> None:
    cases = {
        "x86-64 AVX2 (no VNNI)": "fpu sse4_2 avx fma avx2 bmi2",  # Skylake / Coffee Lake NUC, Zen 2/3
        "x86-64 AVX2 + AVX-VNNI": "sse4_2 avx avx2 avx_vnni",  # Alder Lake / Raptor Lake
        "x86-64 AVX-512 (no VNNI)": "avx2 avx512f avx512dq avx512bw",  # Skylake-SP
        "x86-64 AVX-512 VNNI": "avx2 avx512f avx512_vnni",  # Ice Lake, Zen 4
        "x86-64 AVX-512 VNNI + AMX": "avx2 avx512f avx512_vnni avx512_bf16 amx_bf16 amx_tile amx_int8",
        "x86-64 (no AVX2)": "sse sse2 sse4_2",  # Atom / Celeron J
    }
    for kind, flags in cases.items():
        info = parse_cpuinfo(_x86("Some CPU", flags), "x86_64")
        assert info.kind == kind, (flags, info)
        assert set(info.flags) <= set(flags.split()) and info.model == "Some CPU"
    amx = parse_cpuinfo(_x86("b", cases["x86-64 AVX-512 VNNI + AMX"]), "x86_64")
    assert amx.flags == ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_int8", "amx_bf16")


def test_arm_boards() -> None:
    pi4 = parse_cpuinfo(PI4_64, "aarch64")
    assert pi4 == CpuInfo("Raspberry Pi 4 Model B Rev 1.4 (Cortex-A72)", "arm64", ("asimd",))
    assert pi4.kind == "arm64 NEON (no dotprod)"
    pi5 = parse_cpuinfo(PI5, "aarch64")
    assert pi5.model == "Raspberry Pi 5 Model B Rev 1.0 (Cortex-A76)" and pi5.kind == "arm64 dotprod"
    orin = parse_cpuinfo(ORIN, "aarch64")
    assert orin.model == "Cortex-A78AE" and orin.kind == "arm64 dotprod"
    v1 = parse_cpuinfo(NEOVERSE_V1, "aarch64")
    assert v1.flags == ("asimd", "asimddp", "i8mm", "bf16", "sve")
    assert v1.kind == "arm64 dotprod + i8mm + SVE" and v1.model == "ARM CPU part 0x41/0xd40"
    pi3 = parse_cpuinfo(PI3_32, "armv7l")
    assert pi3.arch == "arm32" and pi3.kind == "arm32 NEON" and pi3.flags == ("neon",)
    assert pi3.model == "Raspberry Pi 3 Model B Rev 1.2 (Cortex-A53)"
    assert set(v1.flags) <= set(ARM_FLAGS)


def test_without_proc_cpuinfo_the_platform_answers(tmp_path: Path) -> None:
    info = cpu_info(tmp_path / "no-cpuinfo")
    assert not info.flags_known and info.flags == () and info.model
    assert "unknown" in info.kind and info.as_dict()["flags"] is None and "flags:" not in info.describe()


def test_bench_prints_and_writes_the_cpu(data_dir: Path, tmp_path: Path) -> None:
    """`face-agent bench`, one short configuration: the CPU line on stdout and in every JSON row."""
    out_file = tmp_path / "bench.json"
    args = ["--data", str(data_dir), "--models", "dlib-resnet-v1", "--precisions", "fp32"]
    args += ["--runtimes", "onnxruntime", "--repeats", "3", "--no-dlib", "--out", str(out_file)]
    out = subprocess.run(
        [sys.executable, "-m", "agent", "bench", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    info = cpu_info()
    assert out.stdout.startswith(f"CPU: {info.describe()}\n")
    rows = json.loads(out_file.read_text())
    assert len(rows) == 1 and "error" not in rows[0], rows
    assert rows[0]["cpu"] == info.as_dict() and rows[0]["detect_640x480"]["median_ms"] > 0
