"""scripts/install.sh: a dry run changes nothing; a real run into a temporary prefix installs, is idempotent
and ends with a real `face-agent doctor` run from the new virtualenv."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import sysconfig
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "install.sh"


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _install(tmp: Path, *extra: str, pythonpath: str | None = None) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    args = [
        "sh", str(SCRIPT), "--prefix", str(tmp / "opt"), "--config-dir", str(tmp / "etc"),
        "--state-dir", str(tmp / "state"), "--unit-dir", str(tmp / "units"), "--python", sys.executable,
        *extra,
    ]  # fmt: skip
    return subprocess.run(args, capture_output=True, text=True, timeout=300, env=env, check=False)


def test_dry_run_prints_every_action_and_changes_nothing(tmp_path: Path) -> None:
    out = _install(tmp_path, "--dry-run")
    assert out.returncode == 0, out.stderr
    assert list(tmp_path.iterdir()) == [], "a dry run created files"
    text = out.stdout
    if subprocess.run(["id", "face-agent"], capture_output=True, check=False).returncode != 0:
        assert "+ useradd --system --user-group" in text
    for expected in (
        f"-m venv {tmp_path}/opt/venv",
        "-m pip install",
        f"+ cp -R {ROOT}/models {tmp_path}/opt/models.new",
        f"+ install -m 0640 -o root -g face-agent {tmp_path}/opt/.config.yaml.new {tmp_path}/etc/config.yaml",
        f"+ install -d -m 0700 -o root -g {os.popen('id -gn').read().strip()} {tmp_path}/etc/credentials",
        f"+ install -d -m 0700 -o face-agent -g face-agent {tmp_path}/state",
        f"face-agent doctor --config {tmp_path}/etc/config.yaml",
        f"+ write {tmp_path}/opt/face-agent.service",
    ):
        assert expected in text, f"dry run does not show: {expected}\n{text}"
    assert "face-agent.service" in text  # either installed (systemd PID 1) or what it would do


def test_unknown_option_is_refused(tmp_path: Path) -> None:
    out = _install(tmp_path, "--frobnicate")
    assert out.returncode == 64 and "unknown option --frobnicate" in out.stderr


def test_real_install_into_a_tmp_prefix_is_idempotent_and_runs_doctor(tmp_path: Path) -> None:
    # Offline and fast: the new venv sees this interpreter's packages through PYTHONPATH and pip builds the
    # project without fetching anything (needs `wheel` in the test environment).
    site = sysconfig.get_paths()["purelib"]
    pip_args = "--no-deps --no-build-isolation --no-index -q"
    out = _install(tmp_path, "--no-user", "--no-systemd", "--pip-args", pip_args, pythonpath=site)
    assert out.returncode == 0, out.stdout + out.stderr
    opt, etc, state = tmp_path / "opt", tmp_path / "etc", tmp_path / "state"
    assert (opt / "venv" / "bin" / "face-agent").is_file()
    assert (opt / "models" / "manifest.json").is_file() and not (opt / "models.new").exists()
    assert not (opt / ".build-src").exists(), "the build copy was left behind"
    config = etc / "config.yaml"
    assert _mode(config) == 0o640
    assert f"state_dir: {state}" in config.read_text() and f"models_dir: {opt}/models" in config.read_text()
    assert _mode(etc / "credentials") == 0o700
    for name in ("mqtt-password", "api-token", "cloud-api-key"):
        assert _mode(etc / "credentials" / name) == 0o600
    assert _mode(state) == 0o700
    assert "would run: install -m 0644" in out.stdout and not (tmp_path / "units").exists()
    unit = (opt / "face-agent.service").read_text()
    assert f"ExecStart={opt}/venv/bin/face-agent run --config {etc}/config.yaml\n" in unit
    assert f"LoadCredential=api-token:{etc}/credentials/api-token\n" in unit
    assert "/opt/face-agent" not in unit and "/etc/face-agent" not in unit
    # The doctor ran from the new venv, against the copied models and the new config.
    assert "OK   models" in out.stdout and f"{opt}/models match their sha256" in out.stdout
    assert f"OK   config             {config} is valid" in out.stdout
    assert "OK   state-permissions" in out.stdout

    # Rerun: keeps a locally edited config and the credentials, reuses the venv, doctor runs again.
    config.write_text(config.read_text() + "# local edit\n")
    (etc / "credentials" / "api-token").write_text("secret")
    state.chmod(0o755)  # a loosened state dir is tightened again
    again = _install(tmp_path, "--no-user", "--no-systemd", "--no-pip-install", pythonpath=site)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "venv" in again.stdout and "exists" in again.stdout and "config" in again.stdout
    assert config.read_text().endswith("# local edit\n")
    assert (etc / "credentials" / "api-token").read_text() == "secret"
    assert _mode(state) == 0o700
    assert "OK   models" in again.stdout


def test_refuses_a_folder_that_is_not_a_checkout(tmp_path: Path) -> None:
    fake = tmp_path / "fake"
    (fake / "scripts").mkdir(parents=True)
    (fake / "scripts" / "install.sh").write_bytes(SCRIPT.read_bytes())
    out = subprocess.run(
        ["sh", str(fake / "scripts" / "install.sh"), "--dry-run"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 1 and "is not a face-agent checkout" in out.stderr
