#!/usr/bin/env bash
# The agent on arm64, under qemu-user emulation on this x86 machine (issue 19). Builds an arm64 Debian
# bookworm root once (debootstrap + qemu-user-static through binfmt_misc), installs the project there with the
# project's own scripts/install.sh (pip, PyPI's aarch64 wheels), then inside the root:
#   - loads the models with their sha256 checked and detects + embeds real lfw-devtrain faces (the engine
#     tests' 40 and the images of 200 pairsDevTrain pairs) on OpenVINO and ONNX Runtime, INT8 and FP32, plain
#     and flip (QEMU_CPU picks the emulated CPU: cortex-a76 ~ the Pi 5's cores, with the dot-product
#     instructions that Orin's A78AE also has; cortex-a72 = the Pi 4's, without them; max = qemu's default,
#     with SVE2 / i8mm / SME, no board of this project);
#   - `face-agent enroll` + `face-agent run` on the Hamilton clip, events into a Mosquitto on the host;
#   - the same clip frame by frame (scripts/arm64/video_faces.py): decoded pixels and detections on both
#     runtimes, compared with x86 (face counts differ with the video decoder, not the models);
# and on the host: the same faces through the x86 .venv, the comparison (scripts/arm64/compare.py) and the
# event count (mosquitto_sub). Idempotent: the root, the apt packages, the venv and pip's cache are kept under
# $FACE_AGENT_ARM64_CACHE (default /var/cache/face-agent-arm64, never inside the checkout); the project is
# reinstalled only when its sources change. Every long step runs under `timeout` (and `nice`).
#
#   sudo scripts/arm64_check.sh                 # everything (first run: debootstrap + pip under emulation)
#   sudo scripts/arm64_check.sh --quick         # reduced: cortex-a76, 10 of the 40 faces, no pairs, no Hamilton
#   sudo scripts/arm64_check.sh root install    # only some stages (root install embed compare hamilton video)
#   sudo scripts/arm64_check.sh clean           # remove the cached root
#
# Environment: FACE_AGENT_ARM64_CACHE, FACE_AGENT_DATA (default ../shared/data), ARM64_CPUS (CPU models that
# embed the 40 faces and the pairs' images: "cortex-a76"), ARM64_CPUS_FACES (the 40 faces only:
# "cortex-a72"; "max" works too, at 3-4x the emulation time: qemu emulates its SVE kernels slowly),
# ARM64_FACES (40; 10 with --quick), ARM64_PAIRS (200), ARM64_HAMILTON_CPU (cortex-a76), ARM64_PIN (1: pin
# the wheels to the x86 .venv's versions, so that only the CPU differs), ARM64_MQTT_PORT (18883),
# DEBIAN_MIRROR, T_* (time bounds below). Speed under emulation says nothing about a Pi: wall times here are
# qemu-user's on this x86 machine.
set -euo pipefail

SRC=$(CDPATH='' cd -- "$(dirname -- "$0")/.." && pwd)
DATA=$(realpath -m "${FACE_AGENT_DATA:-$SRC/../shared/data}")
CACHE=${FACE_AGENT_ARM64_CACHE:-/var/cache/face-agent-arm64}
ROOTFS=$CACHE/rootfs
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
CPUS=${ARM64_CPUS-cortex-a76}
CPUS_FACES=${ARM64_CPUS_FACES-cortex-a72}
HAMILTON_CPU=${ARM64_HAMILTON_CPU:-cortex-a76}
PAIRS=${ARM64_PAIRS:-200}
FACES=${ARM64_FACES:-40}
PIN=${ARM64_PIN:-1}
PORT=${ARM64_MQTT_PORT:-18883}
HOST_VENV=${FACE_AGENT_VENV:-$SRC/.venv}
HAMILTON=faces/face_recognition/examples/short_hamilton_clip.mp4
ENROLL_DIR=faces/face_recognition/examples/knn_examples/train
# Time bounds of each step (seconds). The first run is the long one: debootstrap and apt under emulation. The
# embed stage of one CPU with 200 pairs ran past 5400 s (killed) under qemu on a busy 2-core x86 host.
T_APT_HOST=${T_APT_HOST:-900} T_DEBOOTSTRAP=${T_DEBOOTSTRAP:-3600} T_APT_ROOT=${T_APT_ROOT:-3600}
T_INSTALL=${T_INSTALL:-3600} T_X86=${T_X86:-900} T_EMBED=${T_EMBED:-9000} T_HAMILTON=${T_HAMILTON:-2400}

STAGES=()
QUICK=0
for a in "$@"; do
    case "$a" in
        --quick) QUICK=1 ;;
        root|install|embed|compare|hamilton|video|clean) STAGES+=("$a") ;;
        -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d'; exit 0 ;;
        *) echo "arm64_check.sh: unknown argument $a" >&2; exit 64 ;;
    esac
done
if [ "$QUICK" = 1 ]; then
    CPUS=${ARM64_CPUS-}
    CPUS_FACES=${ARM64_CPUS_FACES-cortex-a76}
    FACES=${ARM64_FACES:-10}
    [ ${#STAGES[@]} -gt 0 ] || STAGES=(root install embed compare)
fi
[ ${#STAGES[@]} -gt 0 ] || STAGES=(root install embed compare hamilton video)
want() { local s; for s in "${STAGES[@]}"; do [ "$s" = "$1" ] && return 0; done; return 1; }

[ "$(id -u)" = 0 ] || { echo "arm64_check.sh: needs root (debootstrap, chroot, mounts)" >&2; exit 1; }
[ "$(uname -m)" = x86_64 ] || { echo "arm64_check.sh: meant for an x86-64 host" >&2; exit 1; }
case "$CACHE" in "$SRC"|"$SRC"/*) echo "arm64_check.sh: the cache must be outside the checkout" >&2; exit 1 ;; esac

mkdir -p "$CACHE"
exec 9>"$CACHE/lock"
flock -n 9 || { echo "arm64_check.sh: another run holds $CACHE/lock" >&2; exit 1; }

if want clean; then
    # Mounts live in per-command private namespaces (scripts/arm64/in_root.sh): nothing to unmount here.
    rm -rf --one-file-system "$ROOTFS" "$CACHE"/*.ok "$CACHE"/install.hash
    echo "removed $ROOTFS"
    exit 0
fi

RUN=$CACHE/runs/$(date -u +%Y%m%dT%H%M%SZ)
mkdir -p "$RUN"
ln -sfn "$RUN" "$CACHE/runs/latest"
TIMES=$RUN/times.tsv
: >"$TIMES"
log() { printf '[%s] %s\n' "$(date -u +%H:%M:%S)" "$*" | tee -a "$RUN/check.log" >&2; }
# step NAME CMD...: run, time, record. A failing step stops the script (set -e) after recording its status.
step() {
    local name=$1 t0 rc=0
    shift
    log "== $name: $*"
    t0=$(date +%s)
    # In the background so that `set -e` holds inside the step (it is ignored in a `cmd || ...` context).
    "$@" &
    wait $! || rc=$?
    printf '%s\t%s\t%s\n' "$name" "$(( $(date +%s) - t0 ))" "$rc" >>"$TIMES"
    log "== $name: exit $rc after $(( $(date +%s) - t0 )) s"
    return "$rc"
}
in_root() { "$SRC/scripts/arm64/in_root.sh" "$ROOTFS" "$SRC" "$DATA" "$RUN" "$@"; }

# -- host packages and binfmt --------------------------------------------------------------------------------
host_packages() {
    local need=() p
    for p in debootstrap qemu-user-static binfmt-support mosquitto mosquitto-clients; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || need+=("$p")
    done
    if [ ${#need[@]} -gt 0 ]; then
        log "installing host packages: ${need[*]}"
        timeout "$T_APT_HOST" apt-get update -qq
        DEBIAN_FRONTEND=noninteractive timeout "$T_APT_HOST" apt-get install -y -qq --no-install-recommends \
            "${need[@]}" >/dev/null
    fi
    [ -e /proc/sys/fs/binfmt_misc/status ] || mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
    local entry=/proc/sys/fs/binfmt_misc/qemu-aarch64
    if [ ! -e "$entry" ]; then
        # Without systemd as PID 1 the package's postinst may not have registered it: binfmt-support does.
        update-binfmts --enable qemu-aarch64 || update-binfmts --import qemu-aarch64
    fi
    grep -q '^enabled' "$entry" || { echo "binfmt entry $entry is not enabled" >&2; return 1; }
    # F (fix binary): the kernel opens the interpreter at registration, so it works inside the chroot
    # without a copy of qemu-aarch64-static in the root.
    grep -q '^flags:.*F' "$entry" || { echo "binfmt entry $entry lacks the F flag" >&2; cat "$entry" >&2; return 1; }
    sed -n '1,3p' "$entry" >"$RUN/binfmt.txt"
}

# -- the arm64 root ------------------------------------------------------------------------------------------
build_root() {
    if [ -f "$CACHE/rootfs.ok" ]; then
        log "root $ROOTFS exists (built $(cat "$CACHE/rootfs.ok")): reused"
        return 0
    fi
    rm -rf --one-file-system "$ROOTFS"
    nice -n 10 timeout "$T_DEBOOTSTRAP" debootstrap --arch=arm64 --variant=minbase \
        --include=ca-certificates bookworm "$ROOTFS" "$MIRROR" >"$RUN/debootstrap.log" 2>&1 \
        || { tail -20 "$RUN/debootstrap.log" >&2; return 1; }
    printf 'deb %s bookworm main\ndeb %s bookworm-updates main\n' "$MIRROR" "$MIRROR" \
        >"$ROOTFS/etc/apt/sources.list"
    date -u +%FT%TZ >"$CACHE/rootfs.ok"
}

root_packages() {
    # python3-venv for the venv; build-essential + python3-dev because hnswlib has no wheel (sdist only).
    local pkgs="python3 python3-venv python3-dev build-essential"
    if [ -f "$CACHE/packages.ok" ] && [ "$(cat "$CACHE/packages.ok")" = "$pkgs" ]; then
        log "root packages present: $pkgs"
        return 0
    fi
    in_root -- nice -n 10 timeout "$T_APT_ROOT" sh -c "apt-get update -qq \
        && apt-get install -y -qq --no-install-recommends $pkgs && apt-get clean" >"$RUN/apt-root.log" 2>&1 \
        || { tail -20 "$RUN/apt-root.log" >&2; return 1; }
    echo "$pkgs" >"$CACHE/packages.ok"
}

# -- the project, installed as on a device -------------------------------------------------------------------
source_hash() {
    (cd "$SRC" && find pyproject.toml agent scripts/install.sh models -type f \
        ! -name '*.pyc' ! -path '*/__pycache__/*' -print0 | sort -z | xargs -0 sha256sum) | sha256sum | cut -c1-16
}

install_project() {
    local hash pins="" chash
    # fa-cpuinfo: the arm64 /proc/cpuinfo that in_root.sh shows inside (qemu-user 7.2 shows the host's).
    chash=$(sha256sum "$SRC/scripts/arm64/cpuinfo.c" | cut -c1-16)
    if [ ! -x "$ROOTFS/usr/local/bin/fa-cpuinfo" ] || [ "$(cat "$CACHE/cpuinfo.hash" 2>/dev/null)" != "$chash" ]; then
        rm -f "$ROOTFS/usr/local/bin/fa-cpuinfo"
        in_root -- gcc -O2 -Wall -o /usr/local/bin/fa-cpuinfo /src/scripts/arm64/cpuinfo.c
        echo "$chash" >"$CACHE/cpuinfo.hash"
    fi
    hash="$(source_hash)-pin$PIN"
    if [ -f "$CACHE/install.hash" ] && [ "$(cat "$CACHE/install.hash")" = "$hash" ] \
        && [ -x "$ROOTFS/opt/face-agent/venv/bin/face-agent" ]; then
        log "project installed from the same sources ($hash): kept"
    else
        if [ "$PIN" = 1 ]; then
            # The x86 .venv's versions of the runtime dependencies: differences then come from the CPU.
            "$HOST_VENV/bin/python" -m pip list --format=freeze 2>/dev/null | grep -iE \
                '^(numpy|opencv-python-headless|onnxruntime|openvino|hnswlib|paho-mqtt|pydantic|pydantic_core|pyyaml|pillow)==' \
                >"$RUN/constraints.txt"
            pins="-c /out/constraints.txt"
        fi
        # HNSWLIB_NO_NATIVE: hnswlib 0.8.0 compiles with -march=native otherwise; a wheel for every armv8-a.
        in_root HNSWLIB_NO_NATIVE=1 -- nice -n 10 timeout "$T_INSTALL" sh /src/scripts/install.sh \
            --prefix /opt/face-agent --config-dir /etc/face-agent --state-dir /var/lib/face-agent \
            --no-user --no-systemd --no-doctor --python python3 \
            --pip-args "$pins --progress-bar off --report /out/pip-report.json" \
            >"$RUN/install.log" 2>&1 || { tail -30 "$RUN/install.log" >&2; return 1; }
        echo "$hash" >"$CACHE/install.hash"
    fi
    # Where each installed distribution came from: a PyPI wheel's tag, or linux_aarch64 = built here.
    in_root -- /opt/face-agent/venv/bin/python -c '
import importlib.metadata as md, json
rows = {}
for d in md.distributions():
    w = d.read_text("WHEEL") or ""
    rows[d.metadata["Name"]] = {"version": d.version,
        "tags": [ln.split(":", 1)[1].strip() for ln in w.splitlines() if ln.startswith("Tag:")]}
print(json.dumps(rows, indent=1, sort_keys=True))' >"$RUN/arm64-dists.json"
}

# -- faces: x86 reference and arm64 ----------------------------------------------------------------------
embed_x86() {
    nice -n 10 timeout "$T_X86" "$HOST_VENV/bin/python" "$SRC/scripts/arm64/faces.py" --data "$DATA" \
        --models-dir "$SRC/models" --faces "$FACES" --pairs "$PAIRS" --out "$RUN/faces-x86.npz" \
        >"$RUN/faces-x86.log" 2>&1 || { tail -20 "$RUN/faces-x86.log" >&2; return 1; }
    timeout 300 "$HOST_VENV/bin/python" "$SRC/scripts/arm64/ov_precisions.py" \
        "$SRC/models/dlib-resnet-v1/int8-qdq.onnx" --json "$RUN/ov-precisions-x86.json" >/dev/null
}

embed_arm64() {  # embed_arm64 QEMU_CPU PAIRS
    local name="faces-arm64-$1-pairs$2"
    # The layers OpenVINO runs in int8 on this CPU (x86: all convolutions; arm64: a few).
    in_root "QEMU_CPU=$1" -- timeout 900 /opt/face-agent/venv/bin/python /src/scripts/arm64/ov_precisions.py \
        /opt/face-agent/models/dlib-resnet-v1/int8-qdq.onnx --json "/out/ov-precisions-$1.json" >/dev/null 2>&1
    in_root "QEMU_CPU=$1" -- nice -n 10 timeout "$T_EMBED" /opt/face-agent/venv/bin/python \
        /src/scripts/arm64/faces.py --data /data --models-dir /opt/face-agent/models --faces "$FACES" \
        --pairs "$2" --out "/out/$name.npz" >"$RUN/$name.log" 2>&1 || { tail -20 "$RUN/$name.log" >&2; return 1; }
}

compare() {
    local files=() c
    for c in $CPUS; do files+=("$RUN/faces-arm64-$c-pairs$PAIRS.npz"); done
    for c in $CPUS_FACES; do files+=("$RUN/faces-arm64-$c-pairs0.npz"); done
    "$HOST_VENV/bin/python" "$SRC/scripts/arm64/compare.py" --models-dir "$SRC/models" \
        --json "$RUN/agreement.json" "$RUN/faces-x86.npz" "${files[@]}" | tee "$RUN/agreement.txt"
    local f
    for f in "$RUN"/ov-precisions-*.json; do
        [ -e "$f" ] || continue
        "$HOST_VENV/bin/python" -c 'import json, sys; d = json.load(open(sys.argv[1]))
print("OpenVINO layer precisions, %s %s: %s" % (d["machine"], d["qemu_cpu"], d["layers"]))' "$f"
    done | tee -a "$RUN/agreement.txt"
}

# -- Hamilton clip, events into a Mosquitto on the host ------------------------------------------------------
hamilton() {
    local conf=$RUN/mosquitto.conf mpid spid rc=0
    if ss -ltn "sport = :$PORT" | grep -q LISTEN; then echo "port $PORT is taken (ARM64_MQTT_PORT)" >&2; return 1; fi
    printf 'listener %s 127.0.0.1\nallow_anonymous true\npersistence false\n' "$PORT" >"$conf"
    mosquitto -c "$conf" >"$RUN/mosquitto.log" 2>&1 &
    mpid=$!
    for _ in $(seq 50); do ss -ltn "sport = :$PORT" | grep -q LISTEN && break; sleep 0.2; done
    mosquitto_sub -h 127.0.0.1 -p "$PORT" -q 1 -v -t 'face-agent/#' >"$RUN/mqtt-events.txt" 2>&1 &
    spid=$!
    sleep 1
    for side in arm64 x86; do
        cat >"$RUN/hamilton-$side.yaml" <<EOF
# scripts/arm64_check.sh: the Hamilton clip, every frame analysed (realtime false: nothing dropped however slow
# the emulated CPU), events over MQTT to the host's broker.
state_dir: $( [ $side = arm64 ] && echo /var/lib/face-agent-check || echo "$RUN/x86-state" )
engine:
  models_dir: $( [ $side = arm64 ] && echo /opt/face-agent/models || echo "$SRC/models" )
cameras:
  - id: hamilton
    source: $( [ $side = arm64 ] && echo /data || echo "$DATA" )/$HAMILTON
    realtime: false
publish:
  device_id: $side-check
  mqtt:
    host: 127.0.0.1
    port: $PORT
metrics:
  enabled: false
EOF
    done
    rm -rf "$ROOTFS/var/lib/face-agent-check" "$RUN/x86-state"
    local t0
    t0=$(date +%s)
    in_root "QEMU_CPU=$HAMILTON_CPU" -- sh -c "nice -n 10 timeout $T_HAMILTON face-agent enroll --config /out/hamilton-arm64.yaml \
            /data/$ENROLL_DIR && nice -n 10 timeout $T_HAMILTON face-agent run --config /out/hamilton-arm64.yaml" \
        >"$RUN/hamilton-arm64.log" 2>&1 || rc=$?
    printf 'hamilton arm64 (enroll + run)\t%s\t%s\n' "$(( $(date +%s) - t0 ))" "$rc" >>"$TIMES"
    t0=$(date +%s)
    if [ "$rc" = 0 ]; then
        ( timeout 600 "$HOST_VENV/bin/face-agent" enroll --config "$RUN/hamilton-x86.yaml" "$DATA/$ENROLL_DIR" \
            && timeout 600 "$HOST_VENV/bin/face-agent" run --config "$RUN/hamilton-x86.yaml" ) \
            >"$RUN/hamilton-x86.log" 2>&1 || rc=$?
    fi
    printf 'hamilton x86 (enroll + run)\t%s\t%s\n' "$(( $(date +%s) - t0 ))" "$rc" >>"$TIMES"
    sleep 2
    kill "$spid" "$mpid" 2>/dev/null || true
    wait "$spid" "$mpid" 2>/dev/null || true
    {
        for side in arm64 x86; do
            local pre="face-agent/$side-check"
            printf '%s: %s unknown, %s recognized events received by mosquitto_sub (%s messages in all); ' \
                "$side" "$(grep -c "^$pre/cameras/hamilton/unknown " "$RUN/mqtt-events.txt" || true)" \
                "$(grep -c "^$pre/cameras/hamilton/recognized " "$RUN/mqtt-events.txt" || true)" \
                "$(grep -c "^$pre/" "$RUN/mqtt-events.txt" || true)"
            grep -h 'agent.app: summary' "$RUN/hamilton-$side.log" | sed 's/.*summary: //' || echo "no summary line"
        done
    } | tee "$RUN/hamilton.txt"
    return "$rc"
}

# -- the Hamilton clip frame by frame: decoder and detector on both sides (why face counts differ) ----------
video() {
    local clip=$HAMILTON
    timeout "$T_X86" "$HOST_VENV/bin/python" "$SRC/scripts/arm64/video_faces.py" --models-dir "$SRC/models" \
        --video "$DATA/$clip" --out "$RUN/video-faces-x86.json" >"$RUN/video-faces-x86.log" 2>&1
    in_root "QEMU_CPU=$HAMILTON_CPU" -- nice -n 10 timeout "$T_HAMILTON" /opt/face-agent/venv/bin/python \
        /src/scripts/arm64/video_faces.py --models-dir /opt/face-agent/models --video "/data/$clip" \
        --out /out/video-faces-arm64.json >"$RUN/video-faces-arm64.log" 2>&1
    "$HOST_VENV/bin/python" "$SRC/scripts/arm64/video_faces.py" --compare "$RUN/video-faces-x86.json" \
        "$RUN/video-faces-arm64.json" | tee "$RUN/video-faces-compare.txt"
}

# -- main ----------------------------------------------------------------------------------------------------
log "run folder $RUN (cache $CACHE, checkout $SRC read-only inside, data $DATA)"
[ -d "$DATA/lfw-devtrain" ] || { echo "no $DATA/lfw-devtrain (FACE_AGENT_DATA)" >&2; exit 1; }
step host-packages host_packages
if want root; then
    step debootstrap build_root
    step root-packages root_packages
fi
[ -f "$CACHE/rootfs.ok" ] || { echo "no root at $ROOTFS: run the root stage first" >&2; exit 1; }
want install && step install install_project
if want embed; then
    step faces-x86 embed_x86
    for c in $CPUS_FACES; do step "faces-arm64-$c-pairs0" embed_arm64 "$c" 0; done
    for c in $CPUS; do step "faces-arm64-$c-pairs$PAIRS" embed_arm64 "$c" "$PAIRS"; done
fi
want compare && step compare compare
want hamilton && step hamilton hamilton
want video && step video video
log "cache $CACHE: $(du -sh --one-file-system "$CACHE" | cut -f1) (root $(du -sh --one-file-system "$ROOTFS" | cut -f1))"
log "wall times (s), under qemu-user emulation on x86 where arm64:"
column -t -s $'\t' "$TIMES" | tee -a "$RUN/check.log" >&2
