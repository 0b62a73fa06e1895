#!/bin/sh
# Install the face agent from this checkout: virtualenv, models, service user, config, credentials, systemd
# unit, then a first `face-agent doctor` run. Idempotent: rerunning upgrades the code and models and keeps
# the existing config and credentials. `--dry-run` prints every action without doing it.
#
#   sudo scripts/install.sh                       # /opt/face-agent, user face-agent, /etc/face-agent
#   scripts/install.sh --dry-run                  # show what would happen
#   scripts/install.sh --prefix /tmp/fa --config-dir /tmp/fa/etc --state-dir /tmp/fa/state \
#       --no-user --no-systemd                    # a private install, e.g. for tests
#
# Platform notes (which wheels exist, Jetson, Intel GPU/NPU drivers): docs/platforms.md.
set -eu

SRC=$(CDPATH= cd -- "$(dirname -- "$0")/.." && pwd)
PREFIX=/opt/face-agent
CONFIG_DIR=/etc/face-agent
STATE_DIR=/var/lib/face-agent
UNIT_DIR=/etc/systemd/system
SERVICE_USER=face-agent
PYTHON=python3
PIP_ARGS=""
DRY_RUN=0
MAKE_USER=1
SYSTEMD=1
PIP_INSTALL=1
DOCTOR=1
SITE_PACKAGES=0

usage() {
    cat <<EOF
usage: $0 [options]
  --prefix DIR            install root: DIR/venv, DIR/models (default $PREFIX)
  --config-dir DIR        config and credentials (default $CONFIG_DIR)
  --state-dir DIR         state directory created 0700 for the service user (default $STATE_DIR)
  --unit-dir DIR          where the systemd unit goes (default $UNIT_DIR)
  --user NAME             service user (default $SERVICE_USER)
  --python PY             interpreter for the venv, Python >= 3.10 (default $PYTHON)
  --system-site-packages  let the venv see system packages (Jetson: NVIDIA's onnxruntime-gpu, python3-opencv)
  --pip-args "ARGS"       extra arguments for pip install (e.g. "--no-deps" or "--find-links DIR")
  --no-user               do not create the service user; files are owned by the invoking user
  --no-systemd            do not install the unit; print what would be done
  --no-pip-install        create the venv but do not pip install the project
  --no-doctor             skip the final face-agent doctor run
  --dry-run               print every action, change nothing
EOF
}

while [ $# -gt 0 ]; do
    case "$1" in
        --prefix) PREFIX=$2; shift 2 ;;
        --config-dir) CONFIG_DIR=$2; shift 2 ;;
        --state-dir) STATE_DIR=$2; shift 2 ;;
        --unit-dir) UNIT_DIR=$2; shift 2 ;;
        --user) SERVICE_USER=$2; shift 2 ;;
        --python) PYTHON=$2; shift 2 ;;
        --pip-args) PIP_ARGS=$2; shift 2 ;;
        --system-site-packages) SITE_PACKAGES=1; shift ;;
        --no-user) MAKE_USER=0; shift ;;
        --no-systemd) SYSTEMD=0; shift ;;
        --no-pip-install) PIP_INSTALL=0; shift ;;
        --no-doctor) DOCTOR=0; shift ;;
        --dry-run) DRY_RUN=1; shift ;;
        -h|--help) usage; exit 0 ;;
        *) echo "install.sh: unknown option $1" >&2; usage >&2; exit 64 ;;
    esac
done

VENV=$PREFIX/venv
CONFIG=$CONFIG_DIR/config.yaml

say() { printf '%s\n' "$*"; }
# Every change goes through run(): printed always, executed unless --dry-run.
run() {
    say "+ $*"
    if [ "$DRY_RUN" = 0 ]; then "$@"; fi
}
die() { printf 'install.sh: %s\n' "$*" >&2; exit 1; }

# -- preflight -----------------------------------------------------------------------------------------------
"$PYTHON" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else 1)' 2>/dev/null \
    || die "$PYTHON is missing or older than 3.10 (Debian/Pi OS: apt install python3 python3-venv)"
[ -f "$SRC/pyproject.toml" ] && [ -d "$SRC/agent" ] || die "$SRC is not a face-agent checkout"
[ -f "$SRC/models/manifest.json" ] || die "$SRC/models/manifest.json missing: run scripts/build_models.py"
say "face-agent install: checkout $SRC -> $PREFIX ($(uname -m), $("$PYTHON" -V 2>&1))"

if [ "$MAKE_USER" = 1 ]; then
    [ "$(id -u)" = 0 ] || [ "$DRY_RUN" = 1 ] || die "creating the service user needs root (or --no-user)"
    OWNER=root
    GROUP=$SERVICE_USER
    RUN_AS=$SERVICE_USER
else
    OWNER=$(id -un)
    GROUP=$(id -gn)
    RUN_AS=""
fi

# -- service user --------------------------------------------------------------------------------------------
if [ "$MAKE_USER" = 1 ]; then
    if id "$SERVICE_USER" >/dev/null 2>&1; then
        say "user $SERVICE_USER exists"
    else
        run useradd --system --user-group --no-create-home --home-dir "$STATE_DIR" \
            --shell /usr/sbin/nologin "$SERVICE_USER"
    fi
    # video: cameras (and Jetson GPU nodes); render: GPU render nodes and the Intel NPU. Only existing groups.
    for g in video render; do
        if getent group "$g" >/dev/null 2>&1; then
            run usermod -a -G "$g" "$SERVICE_USER"
        else
            say "group $g does not exist here: skipped (drop it from SupplementaryGroups= in the unit)"
        fi
    done
fi

# -- code and models -----------------------------------------------------------------------------------------
run install -d -m 0755 "$PREFIX"
if [ -x "$VENV/bin/python" ]; then
    say "venv $VENV exists"
elif [ "$SITE_PACKAGES" = 1 ]; then
    run "$PYTHON" -m venv --system-site-packages "$VENV"
else
    run "$PYTHON" -m venv "$VENV"
fi
if [ "$PIP_INSTALL" = 1 ]; then
    # A copy of the tree keeps pip's in-tree build/ and *.egg-info out of the checkout.
    BUILD=$PREFIX/.build-src
    run rm -rf "$BUILD"
    run install -d -m 0755 "$BUILD"
    run cp -R "$SRC/pyproject.toml" "$SRC/agent" "$BUILD/"
    if [ -f "$SRC/README.md" ]; then run cp "$SRC/README.md" "$BUILD/"; fi
    # shellcheck disable=SC2086  # PIP_ARGS is a list of words on purpose
    run "$VENV/bin/python" -m pip install --disable-pip-version-check --upgrade $PIP_ARGS "$BUILD"
    run rm -rf "$BUILD"
else
    say "skipping pip install (--no-pip-install)"
fi
# Models are not in the wheel: copy them beside the venv, swapping the whole folder so a rerun never leaves
# a mix of old and new files. The config points engine.models_dir here.
run rm -rf "$PREFIX/models.new"
run cp -R "$SRC/models" "$PREFIX/models.new"
run find "$PREFIX/models.new" -name '*.tmp' -delete
run rm -rf "$PREFIX/models"
run mv "$PREFIX/models.new" "$PREFIX/models"
run chmod -R a+rX,go-w "$PREFIX/models"

# -- config and credentials ----------------------------------------------------------------------------------
run install -d -m 0755 "$CONFIG_DIR"
if [ -f "$CONFIG" ]; then
    say "config $CONFIG exists: kept"
else
    TMP_CONFIG=$PREFIX/.config.yaml.new
    if [ -f "$SRC/configs/example.yaml" ]; then
        say "+ write $CONFIG from configs/example.yaml (state_dir $STATE_DIR, models_dir $PREFIX/models)"
        if [ "$DRY_RUN" = 0 ]; then
            # Point state_dir and engine.models_dir at this install; everything else stays as in the example.
            sed -e "s#^state_dir:.*#state_dir: $STATE_DIR#" \
                -e "s#^engine:\$#engine:\n  models_dir: $PREFIX/models#" \
                "$SRC/configs/example.yaml" > "$TMP_CONFIG"
        fi
    else
        say "+ write a minimal $CONFIG"
        if [ "$DRY_RUN" = 0 ]; then
            cat > "$TMP_CONFIG" <<EOF
# Minimal face-agent config written by scripts/install.sh; see configs/example.yaml for every key.
state_dir: $STATE_DIR
engine:
  models_dir: $PREFIX/models
EOF
        fi
    fi
    run install -m 0640 -o "$OWNER" -g "$GROUP" "$TMP_CONFIG" "$CONFIG"
    run rm -f "$TMP_CONFIG"
fi
# Credentials: readable by root only; systemd hands copies to the service (LoadCredential=). All three
# files must exist (empty when unused) or systemd 252 refuses to start the unit.
run install -d -m 0700 -o "$OWNER" -g "$(id -gn)" "$CONFIG_DIR/credentials"
for name in mqtt-password api-token cloud-api-key; do
    if [ ! -f "$CONFIG_DIR/credentials/$name" ]; then
        run install -m 0600 -o "$OWNER" -g "$(id -gn)" /dev/null "$CONFIG_DIR/credentials/$name"
    fi
done
if [ "$MAKE_USER" = 1 ]; then
    run install -d -m 0700 -o "$SERVICE_USER" -g "$SERVICE_USER" "$STATE_DIR"
else
    run install -d -m 0700 "$STATE_DIR"
fi

# -- systemd -------------------------------------------------------------------------------------------------
UNIT_SRC=$SRC/systemd/face-agent.service
UNIT_DST=$UNIT_DIR/face-agent.service
# The unit with this install's paths is always rendered into the prefix (a reference copy that can be
# reviewed or installed by hand); it is installed only where systemd runs.
UNIT_RENDERED=$PREFIX/face-agent.service
say "+ write $UNIT_RENDERED from $UNIT_SRC (prefix $PREFIX, config $CONFIG_DIR, user $SERVICE_USER)"
if [ "$DRY_RUN" = 0 ]; then
    sed -e "s#/opt/face-agent/#$PREFIX/#g" -e "s#/etc/face-agent/#$CONFIG_DIR/#g" \
        -e "s#^User=face-agent#User=$SERVICE_USER#" -e "s#^Group=face-agent#Group=$SERVICE_USER#" \
        "$UNIT_SRC" > "$UNIT_RENDERED"
    chmod 0644 "$UNIT_RENDERED"
fi
if [ "$SYSTEMD" = 1 ] && [ -d /run/systemd/system ]; then
    run install -d -m 0755 "$UNIT_DIR"
    run install -m 0644 "$UNIT_RENDERED" "$UNIT_DST"
    run systemctl daemon-reload
    run systemctl enable face-agent.service
    say "start it with: systemctl start face-agent   (logs: journalctl -u face-agent -f)"
else
    why="--no-systemd"
    [ "$SYSTEMD" = 1 ] && why="systemd is not PID 1 here"
    say "($why) would run: install -m 0644 $UNIT_RENDERED $UNIT_DST"
    say "                   systemctl daemon-reload && systemctl enable --now face-agent"
fi

# -- first doctor run ----------------------------------------------------------------------------------------
if [ "$DOCTOR" = 0 ]; then
    say "skipping face-agent doctor (--no-doctor)"
elif [ ! -x "$VENV/bin/face-agent" ] && [ "$DRY_RUN" = 0 ]; then
    say "no $VENV/bin/face-agent (pip install skipped): doctor not run"
else
    DOCTOR_CMD="$VENV/bin/face-agent doctor --config $CONFIG --state-dir $STATE_DIR"
    if [ -n "$RUN_AS" ] && command -v runuser >/dev/null 2>&1; then
        DOCTOR_CMD="runuser -u $RUN_AS -- $DOCTOR_CMD"  # as the service user: its permissions are what count
    fi
    say "+ $DOCTOR_CMD"
    if [ "$DRY_RUN" = 0 ]; then
        # With the unit's UMask=0077: the runtimes write into the service user's home, which is the state
        # directory (OpenVINO's intel/openvino_ga_cid); with a shell's umask 022 doctor's own
        # state-permissions check then FAILs on those files.
        # shellcheck disable=SC2086
        if (umask 077 && $DOCTOR_CMD); then
            say "doctor: all checks OK"
        else
            say "doctor reported problems (see the fix hints above); rerun: $DOCTOR_CMD"
        fi
    fi
fi
say "done"
