#!/usr/bin/env bash
# Install everything the tests need (system packages, a venv with the agent and its test extras) and run the
# whole suite. Used by the README's second command and by .ci/run.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${FACE_AGENT_VENV:-.venv}

need_apt=()
command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || need_apt+=(mosquitto)
# mosquitto_sub: tests/test_first_hour.py watches events the way docs/mqtt.md tells users to.
command -v mosquitto_sub >/dev/null 2>&1 || need_apt+=(mosquitto-clients)
command -v systemd-analyze >/dev/null 2>&1 || need_apt+=(systemd)
# A real PostgreSQL server for the hub-on-PostgreSQL tests (tests/pg_support.py runs initdb and pg_ctl).
command -v initdb >/dev/null 2>&1 || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need_apt+=(postgresql)
# tests/test_int8_cpus.py runs the INT8 embedder on an emulated AVX2-only CPU (no AVX-512, no VNNI).
[ "$(uname -m)" != x86_64 ] || command -v qemu-x86_64 >/dev/null 2>&1 || need_apt+=(qemu-user)
# tests/rtsp_server.py (the RTSP camera of tests/test_rtsp_source.py) runs on Debian's Python with GObject
# introspection and GStreamer's RTSP server; --check exits non-zero when any element it uses is missing.
/usr/bin/python3 tests/rtsp_server.py --check >/dev/null 2>&1 || need_apt+=(python3 python3-gi
  gir1.2-gst-rtsp-server-1.0 gstreamer1.0-plugins-base gstreamer1.0-plugins-good gstreamer1.0-plugins-bad)
# The console's browser tests (tests/test_console_browser.py): Playwright drives Debian's Chromium, no download.
command -v chromium >/dev/null 2>&1 || need_apt+=(chromium chromium-driver fonts-dejavu-core)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "installing system packages: ${need_apt[*]}"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi

[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip
"$VENV/bin/python" -m pip install -q -e ".[test]"

"$VENV/bin/ruff" check agent tests scripts
"$VENV/bin/python" -m pytest -q "$@"
