#!/usr/bin/env bash
# Run one command inside the cached arm64 root, in a private mount namespace: the mounts (proc, sys, dev,
# the checkout and the shared data read-only, the run's output folder read-write) vanish with the command,
# so an interrupted run never leaves a mount behind. The root shares the host's network (MQTT on 127.0.0.1).
#
#   scripts/arm64/in_root.sh ROOTFS SRC DATA OUT [VAR=value ...] -- command args...
#
# Inside: /src (checkout, ro), /data (shared data, ro), /out (this run's results, rw). QEMU_CPU=... among the
# variables picks the CPU model qemu-user emulates (cortex-a72 ~ Pi 4, cortex-a76 ~ Pi 5 / Orin, max).
set -euo pipefail
[ $# -ge 5 ] || { echo "usage: $0 ROOTFS SRC DATA OUT [VAR=value ...] -- cmd..." >&2; exit 64; }
ROOTFS=$1 SRC=$2 DATA=$3 OUT=$4
shift 4
ENVS=()
while [ $# -gt 0 ] && [ "$1" != "--" ]; do ENVS+=("$1"); shift; done
[ "${1:-}" = "--" ] && shift
[ $# -gt 0 ] || { echo "in_root.sh: no command" >&2; exit 64; }

if [ -z "${FA_IN_NS:-}" ]; then
    # Re-exec in a new mount namespace with private propagation: nothing mounted below leaks to the host.
    exec env FA_IN_NS=1 unshare --mount --propagation private -- "$0" "$ROOTFS" "$SRC" "$DATA" "$OUT" \
        "${ENVS[@]}" -- "$@"
fi

bind_ro() {  # bind_ro HOST_DIR ROOT_DIR
    mkdir -p "$2"
    mount --bind "$1" "$2"
    mount -o remount,bind,ro "$2"
}
mount -t proc proc "$ROOTFS/proc"
mount -t sysfs sysfs "$ROOTFS/sys"
mount --rbind /dev "$ROOTFS/dev"
mkdir -p "$ROOTFS/dev/shm" && mount -t tmpfs -o size=512m tmpfs "$ROOTFS/dev/shm"
mount -t tmpfs -o size=2g tmpfs "$ROOTFS/tmp"
bind_ro "$SRC" "$ROOTFS/src"
bind_ro "$DATA" "$ROOTFS/data"
mkdir -p "$OUT" "$ROOTFS/out" && mount --bind "$OUT" "$ROOTFS/out"
# qemu-user 7.2 shows the guest the host's x86 /proc/cpuinfo; onnxruntime's cpuinfo parser then crashes the
# import (SIGSEGV). Where the install stage has built fa-cpuinfo (scripts/arm64/cpuinfo.c), the root sees an
# arm64 file of the emulated CPU instead (its MIDR and HWCAPs), as QEMU 8.1+ would show by itself.
if [ -x "$ROOTFS/usr/local/bin/fa-cpuinfo" ]; then
    chroot "$ROOTFS" /usr/bin/env -i "${ENVS[@]}" /usr/local/bin/fa-cpuinfo >"$ROOTFS/tmp/cpuinfo"
    mount --bind "$ROOTFS/tmp/cpuinfo" "$ROOTFS/proc/cpuinfo"
fi
cp -L /etc/resolv.conf "$ROOTFS/etc/resolv.conf"
# The host's trust store (where egress passes a TLS-inspecting proxy, its CA is only there): pip uses it.
cp -L /etc/ssl/certs/ca-certificates.crt "$ROOTFS/etc/ssl/certs/host-ca-bundle.crt"

exec chroot "$ROOTFS" /usr/bin/env -i \
    PATH=/opt/face-agent/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    HOME=/root LANG=C.UTF-8 PYTHONDONTWRITEBYTECODE=1 DEBIAN_FRONTEND=noninteractive \
    PIP_CERT=/etc/ssl/certs/host-ca-bundle.crt SSL_CERT_FILE=/etc/ssl/certs/host-ca-bundle.crt \
    PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_DEFAULT_TIMEOUT=180 FACE_AGENT_DATA=/data "${ENVS[@]}" "$@"
