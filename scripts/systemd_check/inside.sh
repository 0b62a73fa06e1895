#!/bin/sh
# Runs inside the booted container of scripts/systemd_check.sh (systemd is PID 1 here), started through
# nsenter by that script: installs the agent with scripts/install.sh and checks it under systemd. Prints every
# command ("inside$ ...") and its output; writes PASS/FAIL/INFO lines to /run/face-agent-check/summary.txt and the
# wall time of each step to walls.txt. The checkout is bind-mounted read-only at /src/face-agent, shared/data at
# /srv/data. Every wait is bounded.
set -u

SRC=/src/face-agent
OUT=/run/face-agent-check
VENV=/opt/face-agent/venv
FA=$VENV/bin/face-agent
CONFIG=/etc/face-agent/config.yaml
CRED=/etc/face-agent/credentials/mqtt-password
CLIP=/srv/data/faces/face_recognition/examples/short_hamilton_clip.mp4
TRAIN=/srv/data/faces/face_recognition/examples/knn_examples/train
NEWFACE=/srv/data/faces/face_recognition/examples/lin-manuel-miranda.png
MQTT_PORT=${FA_CHECK_MQTT_PORT:-18883}
METRICS_PORT=${FA_CHECK_METRICS_PORT:-19851}
NICE=${FA_CHECK_NICE:-10}
DEVICE=fa-check
U=face-agent.service

mkdir -p "$OUT"
chmod 0755 "$OUT"
: > "$OUT/summary.txt"
: > "$OUT/walls.txt"
rm -f "$OUT/hang"

say() { printf '%s\n' "$*"; }
step() { say ""; say "--- $* ($(date -u +%H:%M:%S))"; STEP_T0=$(date +%s); STEP_NAME=$1; }
wall() { printf 'wall %s: %s s\n' "$STEP_NAME" "$(( $(date +%s) - STEP_T0 ))" >> "$OUT/walls.txt"; }
# run SECONDS CMD...: print the command and its output (bounded)
run() {
    secs=$1; shift
    say "inside\$ $*"
    rc=0
    timeout --kill-after=5 "$secs" "$@" 2>&1 || rc=$?
    [ "$rc" = 0 ] || say "(exit $rc)"
    return "$rc"
}
# runsh SECONDS 'shell text': the same for a pipeline
runsh() {
    secs=$1; shift
    say "inside\$ $1"
    rc=0
    timeout --kill-after=5 "$secs" sh -c "$1" 2>&1 || rc=$?
    [ "$rc" = 0 ] || say "(exit $rc)"
    return "$rc"
}
result() {  # PASS|FAIL|INFO name detail
    printf '%s %s: %s\n' "$1" "$2" "$3" | tee -a "$OUT/summary.txt"
}
check() {  # name detail condition-shell
    if sh -c "$3"; then result PASS "$1" "$2"; else result FAIL "$1" "$2"; fi
}
prop() { systemctl show -p "$1" --value "$U"; }
mainpid() { prop MainPID; }
# Mosquitto's log lines (they start with an epoch second) since an epoch second
mqlog() { awk -v t="$1" -F: '$1 >= t' /var/log/mosquitto/mosquitto.log 2>/dev/null; }
# wait_until SECONDS 'condition': poll every 0.5 s; returns 1 on timeout
wait_until() {
    end=$(( $(date +%s) + $1 ))
    while [ "$(date +%s)" -lt "$end" ]; do
        if sh -c "$2" >/dev/null 2>&1; then return 0; fi
        sleep 0.5
    done
    return 1
}
# Background poller: every change of ActiveState/SubState/StatusText and of /readyz, with a monotonic time
poll_states() {  # file
    (
        last=""
        while [ ! -f "$1.stop" ]; do
            s=$(systemctl show -p ActiveState,SubState,StatusText "$U" 2>/dev/null | tr '\n' ' ')
            r=$("$VENV/bin/python" - "$METRICS_PORT" 2>/dev/null <<'EOF'
import sys, urllib.request, urllib.error
try:
    print(urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/readyz", timeout=1).status)
except urllib.error.HTTPError as e:
    print(e.code)
except Exception:
    print("-")
EOF
)
            line="$s readyz=$r"
            if [ "$line" != "$last" ]; then
                printf '%s %s\n' "$(cut -d' ' -f1 /proc/uptime)" "$line" >> "$1"
                last=$line
            fi
            sleep 0.25
        done
    ) &
    POLLER=$!
}
stop_poll() {  # file
    touch "$1.stop"
    wait "$POLLER" 2>/dev/null
    rm -f "$1.stop"
}

# -- 0. a clean slate (the venv is kept: scripts/install.sh upgrades it) ---------------------------------
step reset "reset the previous run's service, user, config, credentials and state"
systemctl stop "$U" >/dev/null 2>&1
systemctl disable "$U" >/dev/null 2>&1
systemctl reset-failed "$U" >/dev/null 2>&1
rm -rf /etc/systemd/system/face-agent.service /etc/systemd/system/face-agent.service.d \
    /etc/face-agent /var/lib/face-agent /var/cache/face-agent /var/log/face-agent /var/lib/private/face-agent \
    /usr/lib/sysusers.d/face-agent.conf
userdel face-agent >/dev/null 2>&1
groupdel face-agent >/dev/null 2>&1
systemctl stop mosquitto.service >/dev/null 2>&1
rm -f /var/lib/mosquitto/mosquitto.db  # no retained message of an earlier run may pass for this one's
: > /var/log/mosquitto/mosquitto.log 2>/dev/null  # Debian's mosquitto.conf logs there, not to the journal
systemctl daemon-reload
run 10 id face-agent
say "state: $(systemctl is-system-running 2>&1), $(systemctl --version | head -1)"
wall

# -- 1. the sysusers file ----------------------------------------------------------------------------------
step sysusers "systemd/face-agent.sysusers with the real systemd-sysusers"
run 10 install -m 0644 "$SRC/systemd/face-agent.sysusers" /usr/lib/sysusers.d/face-agent.conf
run 30 systemd-sysusers face-agent.conf
run 10 getent passwd face-agent
run 10 id face-agent
pw=$(getent passwd face-agent)
uid=$(id -u face-agent 2>/dev/null || echo 99999)
check sysusers "user face-agent: uid $uid (system), home /var/lib/face-agent, shell nologin, groups video render" \
    "[ $uid -lt 1000 ] && echo '$pw' | grep -q ':/var/lib/face-agent:/usr/sbin/nologin\$' \
     && id -nG face-agent | grep -qw video && id -nG face-agent | grep -qw render \
     && [ \"\$(id -gn face-agent)\" = face-agent ]"
wall

# -- 2. scripts/install.sh -----------------------------------------------------------------------------------
step install "scripts/install.sh (systemd is PID 1 here, so it installs and enables the unit)"
say "inside\$ PIP_CERT=/usr/local/share/face-agent-check-ca.crt nice -n $NICE sh $SRC/scripts/install.sh"
rc=0
PIP_CERT=/usr/local/share/face-agent-check-ca.crt timeout --kill-after=10 2000 \
    nice -n "$NICE" sh "$SRC/scripts/install.sh" > "$OUT/install.log" 2>&1 || rc=$?
# pip's progress lines are noise here; everything else install.sh and doctor printed is shown
grep -v -E '^ *(Requirement already satisfied|Collecting|Downloading|Using cached|Obtaining|Installing build|Getting requirements|Preparing metadata|Building wheel|Created wheel|Stored in directory|Processing|Attempting uninstall|Found existing|Uninstalling|Successfully uninstalled|Looking in|━|\||-)' \
    "$OUT/install.log" | cut -c1-220
say "(exit $rc; full log $OUT/install.log)"
run 10 systemctl is-enabled "$U"
run 10 systemctl cat "$U" --no-pager | head -n 14
check install "install.sh exit 0, unit installed and enabled" \
    "[ $rc = 0 ] && [ \"\$(systemctl is-enabled $U)\" = enabled ] && [ -x $FA ]"
wall

# -- 3. the check's set-up: config, broker with a password, the MQTT credential, gallery, hang hook -----------
step setup "test config, Mosquitto with a password file, the credential, the gallery, the hang-hook drop-in"
PW=$(head -c 18 /dev/urandom | base64 | tr -d '/+=')
WPW=$(head -c 18 /dev/urandom | base64 | tr -d '/+=')
export WPW  # the watcher's password: commands below show "$WPW", not the value
umask 077
printf '%s' "$PW" > "$CRED"
umask 022
cat > "$OUT/config.yaml" <<EOF
# Written by scripts/systemd_check/inside.sh: the looped Hamilton clip as the camera, events over MQTT with
# the password from LoadCredential=mqtt-password. Everything else is the agent's default.
state_dir: /var/lib/face-agent
engine:
  models_dir: /opt/face-agent/models
  runtime: {kind: openvino, device: CPU, precision: f32}
cameras:
  - id: hamilton
    source: $CLIP
    loop: true
    realtime: true
    max_fps: 5
recognition:
  group_id: staff
publish:
  device_id: $DEVICE
  mqtt:
    host: 127.0.0.1
    port: $MQTT_PORT
    username: face-agent
    password_credential: mqtt-password
metrics: {enabled: true, host: 127.0.0.1, port: $METRICS_PORT}
log: {level: INFO}
EOF
run 10 install -m 0640 -o root -g face-agent "$OUT/config.yaml" "$CONFIG"
run 60 runuser -u face-agent -- "$FA" run --config "$CONFIG" --validate-config
run 10 ls -l /etc/face-agent/credentials/
rm -f /etc/mosquitto/face-agent-check.passwd
say "inside\$ mosquitto_passwd -b -c /etc/mosquitto/face-agent-check.passwd face-agent \"\$(cat $CRED)\"   (and user watcher)"
mosquitto_passwd -b -c /etc/mosquitto/face-agent-check.passwd face-agent "$PW"
mosquitto_passwd -b /etc/mosquitto/face-agent-check.passwd watcher "$WPW"
chown root:mosquitto /etc/mosquitto/face-agent-check.passwd
chmod 0640 /etc/mosquitto/face-agent-check.passwd
run 10 cat /etc/mosquitto/conf.d/face-agent-check.conf
run 30 systemctl restart mosquitto.service
wait_until 10 "ss -ltn 'sport = :$MQTT_PORT' | grep -q LISTEN"
run 10 ss -ltnp "sport = :$MQTT_PORT"
run 10 mosquitto_pub -h 127.0.0.1 -p "$MQTT_PORT" -t probe -m anonymous
check broker-refuses-anonymous "Mosquitto on 127.0.0.1:$MQTT_PORT accepts only users of its password file" \
    "! mosquitto_pub -h 127.0.0.1 -p $MQTT_PORT -t probe -m x 2>/dev/null"
# the gallery: the five people of knn_examples/train (Lin-Manuel Miranda, the clip's face, comes later)
runsh 600 "nice -n $NICE runuser -u face-agent -- $FA enroll $TRAIN --config $CONFIG --group staff --create-group 2>&1 | tail -n 12"
run 10 install -d -m 0755 /etc/systemd/system/face-agent.service.d
run 10 install -m 0644 /opt/face-agent-check/check-hook.conf /etc/systemd/system/face-agent.service.d/check-hook.conf
run 30 systemctl daemon-reload
wall

# -- 4. Type=notify: active only after warm-up ---------------------------------------------------------------
step readiness "systemctl start: Type=notify, READY=1 after models warmed and gallery loaded"
T_START=$(date +%s)
poll_states "$OUT/start-states.txt"
s0=$(cut -d' ' -f1 /proc/uptime)
run 330 systemctl start "$U"
start_rc=$?
s1=$(cut -d' ' -f1 /proc/uptime)
sleep 1
stop_poll "$OUT/start-states.txt"
say "systemctl start returned after $(echo "$s1 $s0" | awk '{printf "%.1f", $1-$2}') s (exit $start_rc)"
say "state changes seen by polling every 0.25 s (uptime s, systemctl show, /readyz):"
cat "$OUT/start-states.txt"
run 10 systemctl show "$U" -p Type,NotifyAccess,ActiveState,SubState,MainPID,WatchdogUSec,ExecMainStartTimestampMonotonic,ActiveEnterTimestampMonotonic
exec_us=$(prop ExecMainStartTimestampMonotonic)
active_us=$(prop ActiveEnterTimestampMonotonic)
warm=$(echo "$active_us $exec_us" | awk '{printf "%.1f", ($1-$2)/1e6}')
say "main process started -> unit active: $warm s"
runsh 10 "journalctl -u $U -b --no-pager -o short-monotonic --since @$T_START | head -n 20"
# The engine's "engine ready" line (models loaded and warmed) must come before systemd's "Started".
order=$(journalctl -b --no-pager -o cat --since "@$T_START" _PID=1 + SYSLOG_IDENTIFIER=face-agent 2>/dev/null \
    | grep -n -E 'engine ready|Started face-agent|Started Face recognition' | cut -d: -f1 | tr '\n' ' ')
say "journal line numbers of 'engine ready' / 'Started ...': $order"
check readiness "active/running after $warm s of warm-up; 'activating' + 'loading models' seen first; READY after 'engine ready'" \
    "[ $start_rc = 0 ] && [ \"\$(systemctl is-active $U)\" = active ] \
     && grep -q 'StatusText=loading models ActiveState=activating SubState=start' $OUT/start-states.txt \
     && awk 'BEGIN{exit !($warm > 0.5)}' \
     && [ \$(echo '$order' | wc -w) -ge 2 ] && [ \$(echo '$order' | cut -d' ' -f1) -lt \$(echo '$order' | cut -d' ' -f2) ]"
check readyz-during-start "/readyz 503 while activating, 200 once active" \
    "grep -q 'activating.*readyz=503' $OUT/start-states.txt && grep -q 'ActiveState=active.*readyz=200' $OUT/start-states.txt"
wall

# -- 5. STATUS= ------------------------------------------------------------------------------------------------
step status "STATUS= lines in systemctl status"
wait_until 30 "systemctl show -p StatusText --value $U | grep -q 'fps; gallery'"
sleep 6
run 10 systemctl status "$U" --no-pager -n 0 -l
st=$(prop StatusText)
check status "systemctl status shows the agent's STATUS=: $st" \
    "systemctl status $U --no-pager -n 0 -l | grep -q 'Status: \"hamilton .* fps; gallery [0-9]* faces; events'"
wall

# -- 6. LoadCredential= and MQTT --------------------------------------------------------------------------
step credential "LoadCredential=mqtt-password: the agent logs in to the broker with it"
PID=$(mainpid)
runsh 10 "systemctl cat $U | grep ^LoadCredential="
runsh 10 "tr '\\0' '\\n' < /proc/$PID/environ | grep -E '^(CREDENTIALS_DIRECTORY|NOTIFY_SOCKET|WATCHDOG_USEC|WATCHDOG_PID|INVOCATION_ID|JOURNAL_STREAM)='"
runsh 10 "ls -la /run/credentials/$U/"
h1=$(sha256sum < "/run/credentials/$U/mqtt-password" | cut -c1-16)
h2=$(sha256sum < "$CRED" | cut -c1-16)
say "sha256 of the service's copy: $h1..., of $CRED: $h2... (the password itself is not printed)"
check credential-not-in-env "the password is in no environment variable of the service" \
    "! tr '\\0' '\\n' < /proc/$PID/environ | grep -qF '$PW'"
wait_until 30 "journalctl -u $U --no-pager -o cat --since @$T_START | grep -q 'MQTT connected'"
runsh 10 "journalctl -u $U --no-pager -o cat --since @$T_START | grep -E 'MQTT'"
say "inside\$ grep -E \"u'face-agent'|not authorised\" /var/log/mosquitto/mosquitto.log   (lines since the start)"
mqlog "$T_START" | grep -E "u'face-agent'|not authorised" | head -n 5
runsh 40 "mosquitto_sub -h 127.0.0.1 -p $MQTT_PORT -u watcher -P \"\$WPW\" -t 'face-agent/#' -v -W 30 -C 4 | cut -c1-300"
check credential "the broker (anonymous refused) logged the agent in as u'face-agent'; status online retained" \
    "[ '$h1' = '$h2' ] && awk -v t=$T_START -F: '\$1 >= t' /var/log/mosquitto/mosquitto.log | grep -q \"as face-agent-$DEVICE .*u'face-agent'\" \
     && mosquitto_sub -h 127.0.0.1 -p $MQTT_PORT -u watcher -P '$WPW' -t 'face-agent/$DEVICE/status' -C 1 -W 10 | grep -qx online"
wall

# -- 7. systemctl reload ---------------------------------------------------------------------------------------
step reload "systemctl reload: SIGHUP re-reads config and gallery (a face enrolled by another process)"
PID=$(mainpid)
elements() {  # faces in the index the running agent loaded last (its journal line), since an epoch second
    journalctl -u "$U" --no-pager -o cat --since "@$1" | sed -n "s/.*gallery index staff.*'elements': \([0-9]*\).*/\1/p" | tail -n 1
}
before=$(elements "$T_START")
rm -rf "$OUT/enroll2"
install -d -m 0755 "$OUT/enroll2/lin-manuel-miranda"
install -m 0644 "$NEWFACE" "$OUT/enroll2/lin-manuel-miranda/"
# Lin-Manuel Miranda is the face of the clip: enrolled by another process, he is unknown to the running agent
# until the reload (one loop of the 9 s clip is watched before it).
(timeout 15 mosquitto_sub -h 127.0.0.1 -p "$MQTT_PORT" -u watcher -P "$WPW" -t "face-agent/$DEVICE/#" -v -W 12 \
    > "$OUT/mqtt-before-reload.txt" 2>&1 &)
runsh 300 "nice -n $NICE runuser -u face-agent -- $FA enroll $OUT/enroll2 --config $CONFIG --group staff 2>&1 | tail -n 4"
sleep 12
say "before the reload: index loaded with $before faces; StatusText: $(prop StatusText)"
say "  (STATUS= and face_agent_gallery_size count the gallery's SQLite rows, so they show the new face already)"
say "  MQTT events in the 12 s between the enrolment and the reload: $(grep -c -E '/(recognized|unknown) ' "$OUT/mqtt-before-reload.txt"), naming lin-manuel-miranda: $(grep -c 'recognized.*lin-manuel-miranda' "$OUT/mqtt-before-reload.txt")"
T_RELOAD=$(date +%s)
(timeout 90 mosquitto_sub -h 127.0.0.1 -p "$MQTT_PORT" -u watcher -P "$WPW" -t "face-agent/$DEVICE/#" -v -W 80 \
    > "$OUT/mqtt-after-reload.txt" 2>&1 &)
sleep 1
poll_states "$OUT/reload-states.txt"
run 120 systemctl reload "$U"
reload_rc=$?
wait_until 60 "journalctl -u $U --no-pager -o cat --since @$T_RELOAD | grep -q 'reloaded: 1 camera'"
sleep 1
stop_poll "$OUT/reload-states.txt"
say "state changes during the reload:"
cat "$OUT/reload-states.txt"
runsh 10 "journalctl -u $U --no-pager -o short-monotonic --since @$T_RELOAD | head -n 20"
after=$(elements "$T_RELOAD")
check reload "reload exit 0, same MainPID, journal 'reloaded: 1 camera(s)', index reloaded with $before -> $after faces" \
    "[ $reload_rc = 0 ] && [ \"\$(systemctl show -p MainPID --value $U)\" = $PID ] \
     && journalctl -u $U --no-pager -o cat --since @$T_RELOAD | grep -q 'reloaded: 1 camera' \
     && [ -n '$after' ] && [ '$after' = $((before + 1)) ]"
wait_until 75 "grep -q 'recognized.*lin-manuel-miranda' $OUT/mqtt-after-reload.txt"
say "MQTT after the reload (retained gallery before and after, first recognized event):"
{ grep -E '/gallery ' "$OUT/mqtt-after-reload.txt" | head -n 2; grep -E '/recognized ' "$OUT/mqtt-after-reload.txt" | head -n 1; } | cut -c1-400
check reload-recognizes "lin-manuel-miranda: not named in the 12 s before the reload, recognized after it (MQTT)" \
    "! grep -q 'recognized.*lin-manuel-miranda' $OUT/mqtt-before-reload.txt \
     && grep -q 'recognized.*lin-manuel-miranda' $OUT/mqtt-after-reload.txt"
wall

# -- 8. the sandbox ----------------------------------------------------------------------------------------------
step hardening "the sandbox in force: systemd-analyze security, the process's credentials, mounts, devices"
PID=$(mainpid)
runsh 60 "systemd-analyze security $U --no-pager > $OUT/security.txt 2>&1; grep -E '^✗|Overall' $OUT/security.txt"
runsh 60 "systemd-analyze verify /etc/systemd/system/$U 2>&1 | grep -v '^$' | head -n 10; echo verify-exit=\$?"
runsh 10 "grep -E '^(Uid|Gid|Groups|Umask|NoNewPrivs|Seccomp|Seccomp_filters|CapInh|CapPrm|CapEff|CapBnd|CapAmb):' /proc/$PID/status"
run 10 ps -o pid,user,group,supgrp,ni,args -p "$PID"
say "inside\$ for m in / /usr /etc /opt/face-agent /var/lib/face-agent /var/cache/face-agent /var/log/face-agent /tmp /home /root /proc /proc/sys /sys/fs/cgroup /run/credentials/$U; do nsenter -t $PID -m findmnt -no TARGET,FSTYPE,OPTIONS -T \$m; done"
for m in / /usr /etc /opt/face-agent /var/lib/face-agent /var/cache/face-agent /var/log/face-agent /tmp /home /root /proc /proc/sys /sys/fs/cgroup "/run/credentials/$U"; do
    printf '%-32s %s\n' "$m" "$(nsenter -t "$PID" -m findmnt -no TARGET,FSTYPE,OPTIONS -T "$m" 2>&1 | head -n 1 | cut -c1-120)"
done
fuid=$(id -u face-agent)
fgid=$(id -g face-agent)
say "as the service's user in its mount namespace:"
runsh 10 "nsenter -t $PID -m -S $fuid -G $fgid -- sh -c 'touch /opt/face-agent/x; touch /etc/x; touch /var/lib/face-agent/.probe && echo state-dir writable && rm /var/lib/face-agent/.probe; ls /home /root 2>&1 | head -2; echo \"visible pids: \$(ls /proc | grep -c \"^[0-9]\")\"'"
say "(all pids in the container: $(ls /proc | grep -c '^[0-9]'))"
runsh 10 "ls -ld /var/lib/face-agent /var/cache/face-agent /var/log/face-agent; find /var/lib/face-agent -printf '%m %u:%g %p\n' | head -n 12"
cg=$(grep -E '^[0-9]+:devices:' "/proc/$PID/cgroup" | cut -d: -f3)
runsh 10 "grep -E '^(0|[0-9]+:devices):' /proc/$PID/cgroup; [ -n '$cg' ] && [ -f /sys/fs/cgroup/devices$cg/devices.list ] && head -n 4 /sys/fs/cgroup/devices$cg/devices.list; true"
say "DevicePolicy= in this container (a transient unit with DevicePolicy=closed opens /dev/net/tun, which is not allowed):"
runsh 30 "systemd-run --wait --pipe -q -p DevicePolicy=closed sh -c 'exec 3</dev/net/tun && echo opened || echo refused'"
if systemd-run --wait --pipe -q -p DevicePolicy=closed sh -c 'exec 3</dev/net/tun' >/dev/null 2>&1; then
    result INFO device-policy "NOT enforced in this container (no cgroup device controller / device BPF for it): DevicePolicy=closed and DeviceAllow= are untested here"
else
    result PASS device-policy "DevicePolicy=closed refuses a device outside DeviceAllow="
fi
exposure=$(grep -o 'Overall exposure level for .*' "$OUT/security.txt")
check hardening "$exposure; NoNewPrivs 1, seccomp filter mode, no capabilities, / read-only, state dir writable" \
    "grep -q 'NoNewPrivs:.*1' /proc/$PID/status && grep -q 'Seccomp:.*2' /proc/$PID/status \
     && grep -q 'CapEff:.*0000000000000000' /proc/$PID/status && grep -q 'CapBnd:.*0000000000000000' /proc/$PID/status \
     && nsenter -t $PID -m findmnt -no OPTIONS -T /usr | grep -q '^ro' \
     && nsenter -t $PID -m findmnt -no OPTIONS -T /var/lib/face-agent | grep -q '^rw' \
     && grep -q 'Overall exposure level' $OUT/security.txt"
wall

# -- 9. WatchdogSec= ----------------------------------------------------------------------------------------------
step watchdog "WatchdogSec=30s: the recognition thread hangs (test hook), systemd restarts the agent"
PID=$(mainpid)
n0=$(prop NRestarts)
T_HANG=$(date +%s)
poll_states "$OUT/watchdog-states.txt"
h0=$(cut -d' ' -f1 /proc/uptime)
run 5 touch "$OUT/hang"
# 1) the agent stops pinging once the heartbeat is older than heartbeat_max_age_s (30 s)
wait_until 90 "journalctl -u $U --no-pager -o cat --since @$T_HANG | grep -q 'withholding WATCHDOG=1'"
h1=$(cut -d' ' -f1 /proc/uptime)
# 2) systemd's watchdog fires; remove the hang file before the restart (RestartSec=10s) so the new agent runs
wait_until 90 "[ \"\$(systemctl show -p ActiveState --value $U)\" != active ]"
h2=$(cut -d' ' -f1 /proc/uptime)
rm -f "$OUT/hang"
# 3) restarted and ready again
wait_until 240 "[ \"\$(systemctl show -p ActiveState --value $U)\" = active ] && [ \"\$(systemctl show -p MainPID --value $U)\" != $PID ]"
h3=$(cut -d' ' -f1 /proc/uptime)
sleep 1
stop_poll "$OUT/watchdog-states.txt"
say "state changes (uptime s):"
cat "$OUT/watchdog-states.txt"
runsh 10 "journalctl -b --no-pager -o short-monotonic --since @$T_HANG _SYSTEMD_UNIT=$U + UNIT=$U | grep -v -E 'recognized|unknown' | head -n 40 | cut -c1-240"
say "hang -> 'withholding': $(echo "$h1 $h0" | awk '{printf "%.1f", $1-$2}') s; -> unit left active: $(echo "$h2 $h0" | awk '{printf "%.1f", $1-$2}') s; -> active again: $(echo "$h3 $h0" | awk '{printf "%.1f", $1-$2}') s"
run 10 systemctl show "$U" -p NRestarts,MainPID,ActiveState,SubState,Result,ExecMainStatus
n1=$(prop NRestarts)
check watchdog "hang -> agent withholds WATCHDOG=1 -> systemd 'Watchdog timeout' -> SIGABRT -> restart (NRestarts $n0 -> $n1, new MainPID)" \
    "journalctl -u $U --no-pager -o cat --since @$T_HANG | grep -q 'withholding WATCHDOG=1' \
     && journalctl -b --no-pager -o cat --since @$T_HANG UNIT=$U | grep -qi 'watchdog timeout' \
     && [ $n1 -gt $n0 ] && [ \"\$(systemctl is-active $U)\" = active ] && [ \"\$(systemctl show -p MainPID --value $U)\" != $PID ]"
say "the hung thread's stack in the journal (faulthandler on SIGABRT, Environment=PYTHONFAULTHANDLER=1):"
runsh 10 "journalctl -u $U --no-pager -o cat --since @$T_HANG | grep -E 'Fatal Python error|sitecustomize.py|pipeline.py' | head -n 5"
if journalctl -u "$U" --no-pager -o cat --since "@$T_HANG" | grep -q -E 'most recent call first|Fatal Python error'; then
    result PASS watchdog-stacks "the journal has Python's thread stacks from SIGABRT (faulthandler)"
else
    result FAIL watchdog-stacks "no Python thread stacks in the journal after SIGABRT (faulthandler not enabled)"
fi
runsh 10 "ls -la /var/lib/face-agent | grep -i core || echo 'no core file in the state directory'"
wall

# -- 10. a wrong credential is refused (the password the agent uses is the credential's) ---------------------
step wrong-credential "a wrong password in the credential file: the broker refuses the agent"
umask 077
printf '%s' "wrong-$PW" > "$CRED"
umask 022
T_WRONG=$(date +%s)
run 330 systemctl restart "$U"
wait_until 30 "journalctl -u $U --no-pager -o cat --since @$T_WRONG | grep -q 'refused the login'"
runsh 10 "journalctl -u $U --no-pager -o cat --since @$T_WRONG | grep -E 'MQTT' | head -n 3"
say "inside\$ grep 'not authorised' /var/log/mosquitto/mosquitto.log   (lines since the restart)"
mqlog "$T_WRONG" | grep -E 'not authorised' | head -n 2
check wrong-credential "with a wrong password in $CRED the broker says 'not authorised', the agent 'refused the login'" \
    "journalctl -u $U --no-pager -o cat --since @$T_WRONG | grep -q 'refused the login' \
     && awk -v t=$T_WRONG -F: '\$1 >= t' /var/log/mosquitto/mosquitto.log | grep -q 'not authorised'"
umask 077
printf '%s' "$PW" > "$CRED"
umask 022
T_RIGHT=$(date +%s)
run 330 systemctl restart "$U"  # the right password again, so that the stop below has a connected agent
wait_until 30 "journalctl -u $U --no-pager -o cat --since @$T_RIGHT | grep -q 'MQTT connected'"
sleep 5
wall

# -- 11. stop -----------------------------------------------------------------------------------------------------
step stop "systemctl stop: STOPPING=1, an orderly shutdown"
T_STOP=$(date +%s)
poll_states "$OUT/stop-states.txt"
s0=$(cut -d' ' -f1 /proc/uptime)
run 60 systemctl stop "$U"
s1=$(cut -d' ' -f1 /proc/uptime)
stop_poll "$OUT/stop-states.txt"
cat "$OUT/stop-states.txt"
say "systemctl stop took $(echo "$s1 $s0" | awk '{printf "%.1f", $1-$2}') s"
runsh 10 "journalctl -b --no-pager -o short-monotonic --since @$T_STOP _SYSTEMD_UNIT=$U + UNIT=$U | cut -c1-200 | tail -n 12"
runsh 15 "mosquitto_sub -h 127.0.0.1 -p $MQTT_PORT -u watcher -P \"\$WPW\" -t face-agent/$DEVICE/status -v -C 1 -W 10"
check stop "stopped cleanly: 'stopping: SIGTERM received' ... 'stopped', Result=success, retained status offline" \
    "mosquitto_sub -h 127.0.0.1 -p $MQTT_PORT -u watcher -P '$WPW' -t 'face-agent/$DEVICE/status' -C 1 -W 10 | grep -qx offline \
     && journalctl -u $U --no-pager -o cat --since @$T_STOP | grep -q 'stopping: SIGTERM received' \
     && journalctl -u $U --no-pager -o cat --since @$T_STOP | grep -q 'agent.app: stopped\$' \
     && [ \"\$(systemctl show -p Result --value $U)\" = success ]"

# -- 12. an invalid config: exit 78, no restart (RestartPreventExitStatus=78) ------------------------------------
step config-error "a config naming a missing camera file: exit 78 (EX_CONFIG), systemd does not restart"
sed "s#source: $CLIP#source: /srv/data/no-such-clip.mp4#" "$OUT/config.yaml" > "$OUT/bad.yaml"
install -m 0640 -o root -g face-agent "$OUT/bad.yaml" "$CONFIG"
n0=$(prop NRestarts)
T_BAD=$(date +%s)
run 120 systemctl start "$U"
sleep 13  # longer than RestartSec=10s
run 10 systemctl show "$U" -p ActiveState,SubState,Result,ExecMainStatus,NRestarts
runsh 10 "journalctl -b --no-pager -o cat --since @$T_BAD _SYSTEMD_UNIT=$U + UNIT=$U | tail -n 6"
check config-error "exit status 78, unit failed, NRestarts stays $n0" \
    "[ \"\$(systemctl show -p ExecMainStatus --value $U)\" = 78 ] && [ \"\$(systemctl is-active $U)\" = failed ] \
     && [ \"\$(systemctl show -p NRestarts --value $U)\" = $n0 ]"
install -m 0640 -o root -g face-agent "$OUT/config.yaml" "$CONFIG"
systemctl reset-failed "$U"
wall

# -- 13. the journal -----------------------------------------------------------------------------------------------
step journal "journalctl -u face-agent"
runsh 10 "journalctl -u $U -b --no-pager -p warning -o short-monotonic | cut -c1-220 | head -n 30"
runsh 10 "journalctl -b --no-pager -o verbose -p err SYSLOG_IDENTIFIER=face-agent -n 1 | grep -E 'PRIORITY|SYSLOG_IDENTIFIER|_SYSTEMD_UNIT|_UID|MESSAGE='"
nlines=$(journalctl -u "$U" -b --no-pager -o cat | wc -l)
check journal "$nlines lines from the unit this boot, with syslog priorities (warnings and errors filter with -p)" \
    "[ $nlines -gt 10 ] && journalctl -u $U -b --no-pager -p err -o cat | grep -q 'withholding WATCHDOG=1' \
     && journalctl -u $U -b --no-pager -o verbose | grep -q 'SYSLOG_IDENTIFIER=face-agent'"
wall
say ""
say "summary:"
cat "$OUT/summary.txt"
! grep -q '^FAIL' "$OUT/summary.txt"
