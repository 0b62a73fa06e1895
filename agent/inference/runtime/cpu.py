"""What this CPU offers inference: its model name and the instruction-set flags that decide whether INT8 pays.

INT8 is only faster than FP32 where the CPU has dot-product instructions for 8-bit integers (x86: AVX-512
VNNI, AVX-VNNI or AMX; arm64: dotprod / i8mm). Without them the runtimes emulate INT8 with wider
instructions and FP32 can win, so benchmark reports and `doctor` name the CPU and those flags.
Read from /proc/cpuinfo (Linux); elsewhere only the platform module's model and architecture are known.
"""

from __future__ import annotations

import functools
import platform
from dataclasses import dataclass
from pathlib import Path

# In the order they are reported. x86 names as /proc/cpuinfo spells them; ARM ones from its "Features" line.
X86_FLAGS = (
    "avx2",
    "avx512f",
    "avx512_vnni",
    "avx_vnni",
    "avx512_bf16",
    "amx_tile",
    "amx_int8",
    "amx_bf16",
)
ARM_FLAGS = ("neon", "asimd", "asimddp", "i8mm", "bf16", "sve", "sve2")

_ARCH = {"x86_64": "x86-64", "amd64": "x86-64", "aarch64": "arm64", "arm64": "arm64"}

# ARM /proc/cpuinfo has no model name on 64-bit kernels: name the cores of common edge boards from
# "CPU implementer" and "CPU part" (Raspberry Pi 3/4/5, Jetson Nano/Xavier/Orin, Rockchip RK3588).
_ARM_PARTS = {
    ("0x41", "0xd03"): "Cortex-A53",
    ("0x41", "0xd04"): "Cortex-A35",
    ("0x41", "0xd05"): "Cortex-A55",
    ("0x41", "0xd07"): "Cortex-A57",
    ("0x41", "0xd08"): "Cortex-A72",
    ("0x41", "0xd09"): "Cortex-A73",
    ("0x41", "0xd0a"): "Cortex-A75",
    ("0x41", "0xd0b"): "Cortex-A76",
    ("0x41", "0xd41"): "Cortex-A78",
    ("0x41", "0xd42"): "Cortex-A78AE",
    ("0x4e", "0x004"): "NVIDIA Carmel",
}


@dataclass(frozen=True)
class CpuInfo:
    """`flags` holds only the flags among X86_FLAGS / ARM_FLAGS that this CPU reports."""

    model: str
    arch: str
    flags: tuple[str, ...]
    flags_known: bool = True  # False when no /proc/cpuinfo said which flags exist

    @property
    def kind(self) -> str:
        """A short class of CPU for INT8 speed, e.g. 'x86-64 AVX2 (no VNNI)' or 'arm64 dotprod'."""
        if not self.flags_known:
            return f"{self.arch} (instruction-set flags unknown)"
        f = set(self.flags)
        if self.arch == "x86-64":
            return _x86_kind(f)
        if self.arch == "arm64":
            return _arm64_kind(f)
        if self.arch == "arm32":
            return "arm32 NEON" if "neon" in f else "arm32 (no NEON)"
        return self.arch

    def as_dict(self) -> dict[str, object]:
        return {
            "model": self.model,
            "arch": self.arch,
            "kind": self.kind,
            "flags": list(self.flags) if self.flags_known else None,
        }

    def describe(self) -> str:
        """One line for reports: model, kind and the flags present."""
        if not self.flags_known:
            return f"{self.model} [{self.kind}]"
        flags = " ".join(self.flags) or "none of " + " ".join(_relevant(self.arch))
        return f"{self.model} [{self.kind}; flags: {flags}]"


def _x86_kind(f: set[str]) -> str:
    if "amx_int8" in f:
        return "x86-64 AVX-512 VNNI + AMX"
    if "avx512_vnni" in f:
        return "x86-64 AVX-512 VNNI"
    if "avx_vnni" in f:
        return "x86-64 AVX2 + AVX-VNNI"
    if "avx512f" in f:
        return "x86-64 AVX-512 (no VNNI)"
    if "avx2" in f:
        return "x86-64 AVX2 (no VNNI)"
    return "x86-64 (no AVX2)"


def _arm64_kind(f: set[str]) -> str:
    if "i8mm" in f:
        kind = "arm64 dotprod + i8mm"
    elif "asimddp" in f:
        kind = "arm64 dotprod"
    elif "asimd" in f:
        kind = "arm64 NEON (no dotprod)"
    else:
        kind = "arm64"
    return kind + (" + SVE" if "sve" in f else "")


def _relevant(arch: str) -> tuple[str, ...]:
    return X86_FLAGS if arch == "x86-64" else ARM_FLAGS if arch.startswith("arm") else ()


def normalise_arch(machine: str) -> str:
    m = machine.lower()
    if m in _ARCH:
        return _ARCH[m]
    if m.startswith("arm"):
        return "arm32"
    return m or "unknown"


def parse_cpuinfo(text: str, machine: str) -> CpuInfo:
    """The first processor's facts from /proc/cpuinfo text; `machine` is platform.machine()."""
    fields: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        key = key.strip().lower()
        if sep and key not in fields:  # the first processor block wins; board lines come once at the end
            fields[key] = value.strip()
    arch = normalise_arch(machine)
    raw = fields.get("flags", fields.get("features"))
    present = set(raw.split()) if raw is not None else set()
    flags = tuple(f for f in _relevant(arch) if f in present)
    return CpuInfo(_model_name(fields, arch, machine), arch, flags, flags_known=raw is not None)


def _model_name(fields: dict[str, str], arch: str, machine: str) -> str:
    if arch.startswith("arm"):
        # x86 has a numeric "model"; on ARM it is the board (Raspberry Pi), else the SoC name ("Hardware").
        board = fields.get("model") or fields.get("hardware")
        part = (fields.get("cpu implementer", ""), fields.get("cpu part", ""))
        core = _ARM_PARTS.get(part) or (f"ARM CPU part {part[0]}/{part[1]}" if all(part) else "")
        named = " ".join(filter(None, [board, f"({core})" if board and core else core]))
        if named:
            return named
    return fields.get("model name") or platform.processor() or machine or "unknown"


@functools.cache
def cpu_info(path: Path = Path("/proc/cpuinfo")) -> CpuInfo:
    """This machine's CPU (read once: it does not change while we run)."""
    machine = platform.machine()
    try:
        return parse_cpuinfo(path.read_text(errors="replace"), machine)
    except OSError:  # not Linux: no flags to read
        return CpuInfo(platform.processor() or machine or "unknown", normalise_arch(machine), (), False)


def cpu_model() -> str:
    """The CPU model name for benchmark reports: numbers only mean something beside their machine."""
    return cpu_info().model
