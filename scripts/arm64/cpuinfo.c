/* An arm64 /proc/cpuinfo for the CPU that qemu-user emulates, in the Linux kernel's format.
 *
 * qemu-user 7.2 (Debian bookworm) passes the *host's* /proc/cpuinfo through to the guest: an x86 file. Programs
 * that parse it on aarch64 (the cpuinfo library inside onnxruntime; the agent's own CPU report) then find no
 * ARM processor: onnxruntime 1.32 dies with SIGSEGV at `import onnxruntime`. QEMU 8.1 and later emulate the
 * file themselves. scripts/arm64/in_root.sh runs this program under the requested QEMU_CPU and bind-mounts its
 * output over /proc/cpuinfo inside the root: MIDR_EL1 as the emulated CPU reports it (readable from user space
 * because HWCAP_CPUID is set), the Features line from AT_HWCAP / AT_HWCAP2 with the kernel's names, one block
 * per configured processor.
 *
 *   gcc -O2 -o /usr/local/bin/fa-cpuinfo scripts/arm64/cpuinfo.c
 */
#include <stdio.h>
#include <sys/auxv.h>
#include <unistd.h>

/* arch/arm64/kernel/cpuinfo.c, hwcap_str[], in bit order of AT_HWCAP and then AT_HWCAP2. */
static const char *hwcap1[] = {
    "fp", "asimd", "evtstrm", "aes", "pmull", "sha1", "sha2", "crc32", "atomics", "fphp", "asimdhp", "cpuid",
    "asimdrdm", "jscvt", "fcma", "lrcpc", "dcpop", "sha3", "sm3", "sm4", "asimddp", "sha512", "sve",
    "asimdfhm", "dit", "uscat", "ilrcpc", "flagm", "ssbs", "sb", "paca", "pacg"};
static const char *hwcap2[] = {
    "dcpodp", "sve2", "sveaes", "svepmull", "svebitperm", "svesha3", "svesm4", "flagm2", "frint", "svei8mm",
    "svef32mm", "svef64mm", "svebf16", "i8mm", "bf16", "dgh", "rng", "bti", "mte", "ecv", "afp", "rpres",
    "mte3", "sme", "smei16i64", "smef64f64", "smei8i32", "smef16f32", "smeb16f32", "smef32f32", "smefa64",
    "wfxt", "ebf16", "sveebf16"};

int main(void) {
    unsigned long hw = getauxval(AT_HWCAP), hw2 = getauxval(AT_HWCAP2), midr = 0;
    if (hw & (1UL << 11)) /* HWCAP_CPUID: EL0 may read the ID registers */
        __asm__ volatile("mrs %0, MIDR_EL1" : "=r"(midr));
    long n = sysconf(_SC_NPROCESSORS_CONF);
    for (long cpu = 0; cpu < (n > 0 ? n : 1); cpu++) {
        printf("processor\t: %ld\nBogoMIPS\t: 50.00\nFeatures\t:", cpu);
        for (unsigned i = 0; i < sizeof hwcap1 / sizeof *hwcap1; i++)
            if (hw & (1UL << i)) printf(" %s", hwcap1[i]);
        for (unsigned i = 0; i < sizeof hwcap2 / sizeof *hwcap2; i++)
            if (hw2 & (1UL << i)) printf(" %s", hwcap2[i]);
        printf("\nCPU implementer\t: 0x%02lx\nCPU architecture: 8\nCPU variant\t: 0x%lx\nCPU part\t: 0x%03lx\n"
               "CPU revision\t: %lu\n\n",
               (midr >> 24) & 0xff, (midr >> 20) & 0xf, (midr >> 4) & 0xfff, midr & 0xf);
    }
    return 0;
}
