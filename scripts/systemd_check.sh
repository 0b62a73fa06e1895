#!/bin/sh
# The face agent under a real systemd (issue 19): boot a Debian bookworm amd64 root with systemd as PID 1
# in a container (systemd-nspawn --boot), install the package and the unit there with scripts/install.sh,
# and check for real: Type=notify readiness after the warm-up, STATUS= lines, `systemctl reload` reloading
# the gallery, WatchdogSec= restarting an agent whose recognition thread hangs, LoadCredential= for the MQTT
# password (a Mosquitto inside the container that refuses anonymous clients), the sandbox in force
# (systemd-analyze security), the sysusers file, and the journal. The camera is the Hamilton clip from
# shared/data, bind-mounted read-only and looped, so no hardware is needed.
#
#   sudo scripts/systemd_check.sh                 # build or reuse the root, boot, install, check, power off
#   sudo scripts/systemd_check.sh --fresh-venv    # also rebuild /opt/face-agent/venv inside the root
#   sudo scripts/systemd_check.sh --rebuild-root  # debootstrap the root again
#   sudo scripts/systemd_check.sh --keep-running  # leave the container booted (prints how to enter it)
#
# Needs root, debootstrap and systemd-nspawn (`apt-get install debootstrap systemd-container`; the script
# installs them when missing and apt-get works), Debian's mirror and PyPI. The root is cached outside the
# checkout in $FA_SYSTEMD_CACHE (default /var/cache/face-agent-systemd): bookworm-amd64/ (the root: 0.75 GiB
# after debootstrap, 1.5 GiB with the venv and models), pip/ (pip's cache, bind-mounted: the wheel compiled
# from hnswlib's sdist), runs/<UTC time>/ (every command and its output: transcript.txt; summary.txt). Idempotent: a rerun reuses the root and the venv, and starts the checks from
# a clean service user, config, credentials and state. Every step has a timeout; heavy steps run niced.
# Exit status: 0 when every check passed, 1 when any failed, 2 when the container could not be booted.
set -eu

SRC=$(CDPATH='' cd -- "$(dirname -- "$0")/.." && pwd)
HERE=$SRC/scripts/systemd_check
CACHE=${FA_SYSTEMD_CACHE:-/var/cache/face-agent-systemd}
ROOT=$CACHE/bookworm-amd64
MIRROR=${FA_DEBIAN_MIRROR:-http://deb.debian.org/debian}
DATA=${FA_DATA:-$(CDPATH='' cd -- "$SRC/.." && pwd)/shared/data}
MQTT_PORT=${FA_CHECK_MQTT_PORT:-18883}
METRICS_PORT=${FA_CHECK_METRICS_PORT:-19851}
MACHINE=fa-systemd-check
NICE=${FA_CHECK_NICE:-10}             # debootstrap and pip; the booted container runs at nice 5
# unified: the container's systemd sees only cgroup v2, as Debian 12 and Pi OS bookworm boot by default
# (works on a hybrid v1 + unified host too); hybrid: the host's layout.
CGROUP=${FA_CHECK_CGROUP:-unified}
ROOT_VERSION=1                        # bump when the package list or the root's set-up changes
PACKAGES=systemd,systemd-sysv,dbus,procps,python3,python3-venv,python3-dev,build-essential,mosquitto,mosquitto-clients,ca-certificates,iproute2

FRESH_VENV=0
REBUILD_ROOT=0
KEEP_RUNNING=0
while [ $# -gt 0 ]; do
    case "$1" in
        --fresh-venv) FRESH_VENV=1; shift ;;
        --rebuild-root) REBUILD_ROOT=1; shift ;;
        --keep-running) KEEP_RUNNING=1; shift ;;
        -h|--help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 0 ;;
        *) echo "systemd_check.sh: unknown option $1" >&2; exit 64 ;;
    esac
done

[ "$(id -u)" = 0 ] || { echo "systemd_check.sh: needs root (debootstrap, systemd-nspawn)" >&2; exit 2; }
[ "$(uname -m)" = x86_64 ] || { echo "systemd_check.sh: builds an amd64 root; run it on x86-64" >&2; exit 2; }
[ -f "$DATA/faces/face_recognition/examples/short_hamilton_clip.mp4" ] \
    || { echo "systemd_check.sh: no Hamilton clip under $DATA (set FA_DATA)" >&2; exit 2; }

mkdir -p "$CACHE/pip" "$CACHE/runs"
RUN=$CACHE/runs/$(date -u +%Y%m%dT%H%M%SZ)
mkdir -p "$RUN"
T=$RUN/transcript.txt
: > "$T"
START_ALL=$(date +%s)

# One run at a time: the root and the machine name are shared.
exec 9> "$CACHE/lock"
if ! flock -n 9; then echo "systemd_check.sh: another run holds $CACHE/lock" >&2; exit 2; fi

log() { printf '%s\n' "$*" | tee -a "$T"; }
section() { log ""; log "=== $* ($(date -u +%H:%M:%S))"; }
# Run a host command, bounded, with the command line and its output in the transcript.
host() {
    secs=$1; shift
    log "host\$ $*"
    rc=0
    timeout --kill-after=10 "$secs" "$@" >> "$T" 2>&1 || rc=$?
    [ "$rc" = 0 ] || log "(exit $rc)"
    return "$rc"
}

# -- tools -----------------------------------------------------------------------------------------------
section "tools"
if ! command -v debootstrap >/dev/null 2>&1 || ! command -v systemd-nspawn >/dev/null 2>&1; then
    host 600 sh -c 'apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap systemd-container'
fi
log "$(systemd-nspawn --version | head -1); debootstrap $(dpkg-query -W -f='${Version}' debootstrap 2>/dev/null || echo '?')"
log "host: $(uname -sr), PID 1 = $(cat /proc/1/comm), cgroups: $(stat -fc %T /sys/fs/cgroup) at /sys/fs/cgroup$( [ -d /sys/fs/cgroup/unified ] && echo ' (hybrid: v1 + unified)')"

# -- root ------------------------------------------------------------------------------------------------
section "root $ROOT"
T0=$(date +%s)
if [ "$REBUILD_ROOT" = 1 ] || [ "$(cat "$ROOT/.face-agent-check-root" 2>/dev/null)" != "$ROOT_VERSION" ]; then
    rm -rf "$ROOT.new"
    host 1800 nice -n "$NICE" ionice -c3 debootstrap --variant=minbase --include="$PACKAGES" \
        bookworm "$ROOT.new" "$MIRROR" || { log "debootstrap failed: see $T"; exit 2; }
    # No login prompt on the (absent) console; the container gets a fixed name.
    ln -sf /dev/null "$ROOT.new/etc/systemd/system/console-getty.service"
    ln -sf /dev/null "$ROOT.new/etc/systemd/system/getty@tty1.service"
    echo "$MACHINE" > "$ROOT.new/etc/hostname"
    : > "$ROOT.new/etc/machine-id"
    echo "$ROOT_VERSION" > "$ROOT.new/.face-agent-check-root"
    rm -rf "$ROOT"
    mv "$ROOT.new" "$ROOT"
    log "root built in $(( $(date +%s) - T0 )) s"
else
    log "root cached (version $ROOT_VERSION): $(du -sh "$ROOT" 2>/dev/null | cut -f1)"
fi
# The host's trust store, for pip behind a TLS-intercepting proxy (it is the system bundle anywhere else).
install -m 0644 /etc/ssl/certs/ca-certificates.crt "$ROOT/usr/local/share/face-agent-check-ca.crt"
# The check's own files, outside the checkout's bind mount so that they do not depend on it.
install -d -m 0755 "$ROOT/opt/face-agent-check/hook"
install -m 0644 "$HERE/hook/sitecustomize.py" "$ROOT/opt/face-agent-check/hook/sitecustomize.py"
install -m 0644 "$HERE/check-hook.conf" "$ROOT/opt/face-agent-check/check-hook.conf"
sed "s/@MQTT_PORT@/$MQTT_PORT/" "$HERE/mosquitto.conf" > "$ROOT/etc/mosquitto/conf.d/face-agent-check.conf"
install -m 0755 "$HERE/inside.sh" "$ROOT/opt/face-agent-check/inside.sh"
if [ "$FRESH_VENV" = 1 ]; then rm -rf "$ROOT/opt/face-agent"; fi
WALL_ROOT=$(( $(date +%s) - T0 ))

# -- boot ------------------------------------------------------------------------------------------------
section "boot"
for port in "$MQTT_PORT" "$METRICS_PORT"; do
    if ss -ltn "sport = :$port" | grep -q LISTEN; then
        log "port $port is taken on the host (the container shares its network): set FA_CHECK_MQTT_PORT / FA_CHECK_METRICS_PORT"
        exit 2
    fi
done
# A container left over from an earlier --keep-running run: ours by its pid file, stopped by its pid.
if [ -f "$CACHE/nspawn.pid" ]; then
    old=$(cat "$CACHE/nspawn.pid")
    if [ -n "$old" ] && [ "$(cat "/proc/$old/comm" 2>/dev/null)" = systemd-nspawn ]; then
        log "stopping the container of an earlier run (nspawn pid $old)"
        kill -TERM "$old" 2>/dev/null || true
        i=0; while [ -d "/proc/$old" ] && [ $i -lt 60 ]; do sleep 1; i=$((i + 1)); done
        [ -d "/proc/$old" ] && kill -KILL "$old" 2>/dev/null || true
    fi
    rm -f "$CACHE/nspawn.pid"
fi
T0=$(date +%s)
# --register=no --keep-unit: the host need not run systemd or D-Bus (without them nspawn fails with "Failed
# to open system bus: No such file or directory"); the container then runs in nspawn's own cgroup.
NSPAWN_CMD="systemd-nspawn --boot --register=no --keep-unit --machine=$MACHINE --directory=$ROOT --console=passive \
--bind-ro=$SRC:/src/face-agent --bind-ro=$DATA:/srv/data --bind=$CACHE/pip:/root/.cache/pip \
--setenv=FA_CHECK_MQTT_PORT=$MQTT_PORT --setenv=FA_CHECK_METRICS_PORT=$METRICS_PORT"
case "$CGROUP" in unified) UH=1 ;; hybrid) UH=0 ;; *) echo "FA_CHECK_CGROUP: unified or hybrid" >&2; exit 64 ;; esac
log "host\$ SYSTEMD_NSPAWN_UNIFIED_HIERARCHY=$UH nice -n 5 $NSPAWN_CMD &"
# shellcheck disable=SC2086  # NSPAWN_CMD is a list of words
SYSTEMD_NSPAWN_UNIFIED_HIERARCHY=$UH nice -n 5 $NSPAWN_CMD > "$RUN/nspawn.log" 2>&1 &
NSPAWN=$!
echo "$NSPAWN" > "$CACHE/nspawn.pid"
LEADER=""
i=0
while [ $i -lt 60 ]; do
    if ! kill -0 "$NSPAWN" 2>/dev/null; then break; fi
    for c in $(cat "/proc/$NSPAWN/task/$NSPAWN/children" 2>/dev/null); do
        if [ "$(cat "/proc/$c/comm" 2>/dev/null)" = systemd ]; then LEADER=$c; fi
    done
    [ -n "$LEADER" ] && break
    sleep 1; i=$((i + 1))
done
if [ -z "$LEADER" ]; then
    log "the container did not boot: systemd-nspawn said:"
    tail -n 30 "$RUN/nspawn.log" | tee -a "$T"
    kill -TERM "$NSPAWN" 2>/dev/null || true
    rm -f "$CACHE/nspawn.pid"
    exit 2
fi
log "nspawn pid $NSPAWN, container PID 1 = host pid $LEADER ($(tr '\0' ' ' < "/proc/$LEADER/cmdline"))"

# A command inside the container: all its namespaces, a clean environment.
inside() {
    nsenter --target "$LEADER" --mount --uts --ipc --net --pid -- /usr/bin/env -i \
        PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 TERM=dumb SYSTEMD_PAGER= \
        SYSTEMD_COLORS=0 FA_CHECK_MQTT_PORT="$MQTT_PORT" FA_CHECK_METRICS_PORT="$METRICS_PORT" "$@"
}
stop_container() {
    if [ "$KEEP_RUNNING" = 1 ]; then
        log "container left running (nspawn pid $NSPAWN); enter it with: nsenter -t $LEADER -m -u -i -n -p /bin/bash"
        log "power it off with: nsenter -t $LEADER -m -u -i -n -p systemctl poweroff"
        return 0
    fi
    inside systemctl poweroff >/dev/null 2>&1 || kill -TERM "$NSPAWN" 2>/dev/null || true
    i=0; while kill -0 "$NSPAWN" 2>/dev/null && [ $i -lt 90 ]; do sleep 1; i=$((i + 1)); done
    if kill -0 "$NSPAWN" 2>/dev/null; then
        log "container did not power off within 90 s: killing nspawn pid $NSPAWN"
        kill -KILL "$NSPAWN" 2>/dev/null || true
    else
        log "container powered off in $i s"
    fi
    rm -f "$CACHE/nspawn.pid"
}
trap 'stop_container' EXIT

log "inside\$ systemctl is-system-running --wait"
state=$(timeout 180 nsenter --target "$LEADER" --mount --uts --ipc --net --pid -- \
    /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin systemctl is-system-running --wait 2>&1) || true
log "$state"
if [ "$state" != running ]; then
    inside systemctl --failed --no-legend --plain 2>&1 | tee -a "$T" || true
fi
WALL_BOOT=$(( $(date +%s) - T0 ))
# An earlier run left the unit installed and enabled (WantedBy=multi-user.target): it started at boot.
log "face-agent.service at boot: $(inside systemctl is-enabled face-agent.service 2>&1), $(inside systemctl is-active face-agent.service 2>&1)"
log "booted in $WALL_BOOT s: $(inside systemctl --version | head -1); the container's /sys/fs/cgroup: $(inside findmnt -no FSTYPE /sys/fs/cgroup | head -n 1)"

# -- install and checks (inside) -------------------------------------------------------------------------
section "install and checks inside the container"
T0=$(date +%s)
rc=0
# install.sh's pip step is the heavy one (first run: downloads, hnswlib compiles); niced from here.
nice -n "$NICE" timeout --kill-after=30 2400 nsenter --target "$LEADER" --mount --uts --ipc --net --pid -- \
    /usr/bin/env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 \
    TERM=dumb SYSTEMD_PAGER= SYSTEMD_COLORS=0 FA_CHECK_MQTT_PORT="$MQTT_PORT" \
    FA_CHECK_METRICS_PORT="$METRICS_PORT" FA_CHECK_NICE="$NICE" \
    /opt/face-agent-check/inside.sh >> "$T" 2>&1 || rc=$?
WALL_INSIDE=$(( $(date +%s) - T0 ))
[ "$rc" = 124 ] && log "inside.sh timed out"
inside cat /run/face-agent-check/summary.txt > "$RUN/summary.txt" 2>/dev/null || true
inside cat /run/face-agent-check/walls.txt >> "$RUN/summary.txt" 2>/dev/null || true

section "summary"
cat "$RUN/summary.txt" | tee -a "$T"
log "wall: root ${WALL_ROOT} s, boot ${WALL_BOOT} s, install + checks ${WALL_INSIDE} s, total $(( $(date +%s) - START_ALL )) s"
log "transcript: $T"
if [ "$rc" = 0 ] && ! grep -q '^FAIL' "$RUN/summary.txt"; then exit 0; fi
exit 1
