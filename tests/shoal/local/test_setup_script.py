"""scripts/setup.sh changes nothing on the host that it did not make (no root needed).

It once ran `systemctl disable --now` and `pkill` on redis-server and haproxy after installing
packages, which stops the host's own redis or haproxy if it has one; and `ln -sfn` replaced a
kernel-headers link that was there but broken. Here the script runs in a sandbox: a copy of
it in a scratch checkout, stand-ins for apt-get, dpkg-query, systemctl, service, pkill and
their kin on PATH (each records how it was called), and SHOAL_SETUP_ROOT standing in for /.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[3] / "scripts" / "setup.sh"
KERNEL = "6.18.0-test"
HEADERS = ("linux-headers-6.1.0-28-amd64", "linux-headers-6.1.0-28-common")

# Each stand-in appends "name args..." to $CALLS. apt-get install also records whether
# services may start at that moment, by asking policy-rc.d as invoke-rc.d does.
STUB = """#!/bin/sh
echo "$(basename "$0") $*" >> "$CALLS"
"""
STUBS = {
    "dpkg-query": STUB + 'for arg; do package=$arg; done\n'
                         'for p in $MISSING; do [ "$p" = "$package" ] && exit 1; done\nprintf "install ok installed"\n',
    "apt-get": STUB + """if [ "$1" = install ]; then
  policy="$SHOAL_SETUP_ROOT/usr/sbin/policy-rc.d"
  if [ -x "$policy" ]; then "$policy" redis-server start; echo "policy-rc.d says $?" >> "$CALLS"
  else echo "policy-rc.d absent" >> "$CALLS"; fi
fi
""",
    "id": STUB + "echo 0\n",
    "uname": STUB + f"echo {KERNEL}\n",
}
# What must never run: anything that stops, disables or kills a service.
FORBIDDEN = ("systemctl", "service", "pkill", "killall", "kill", "invoke-rc.d", "deb-systemd-invoke", "update-rc.d")


@dataclass
class Sandbox:
    root: Path        # stands in for /
    checkout: Path
    calls: Path
    env: dict

    def run(self, missing: str = "") -> subprocess.CompletedProcess:
        return subprocess.run(["bash", str(self.checkout / "scripts" / "setup.sh")], capture_output=True, text=True,
                              env={**self.env, "MISSING": missing}, timeout=60)

    def called(self) -> list[str]:
        return self.calls.read_text().splitlines() if self.calls.exists() else []

    @property
    def modules(self) -> Path:
        return self.root / "lib" / "modules" / KERNEL


@pytest.fixture
def sandbox(tmp_path) -> Sandbox:
    assert "SHOAL_SETUP_ROOT" in SCRIPT.read_text(), \
        "scripts/setup.sh takes no SHOAL_SETUP_ROOT: it cannot run in a sandbox, and this test will not run it on the host"
    checkout = tmp_path / "checkout"
    (checkout / "scripts").mkdir(parents=True)
    shutil.copy(SCRIPT, checkout / "scripts" / "setup.sh")
    pyproject = checkout / "pyproject.toml"
    pyproject.write_text("[project]\nname = 'scratch'\n")
    venv_python = checkout / ".venv" / "bin" / "python"
    venv_python.parent.mkdir(parents=True)
    venv_python.write_text("#!/bin/sh\n")
    venv_python.chmod(0o755)
    (checkout / ".venv" / f".installed-{hashlib.sha1(pyproject.read_bytes()).hexdigest()[:12]}").touch()

    root = tmp_path / "root"
    (root / "usr" / "sbin").mkdir(parents=True)
    for name in HEADERS:
        (root / "usr" / "src" / name).mkdir(parents=True)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in (*STUBS, *FORBIDDEN):
        stub = bin_dir / name
        stub.write_text(STUBS.get(name, STUB))
        stub.chmod(0o755)
    calls = tmp_path / "calls"
    env = {"PATH": f"{bin_dir}:{os.environ['PATH']}", "CALLS": str(calls), "SHOAL_SETUP_ROOT": str(root),
           "HOME": str(tmp_path)}
    return Sandbox(root, checkout, calls, env)


def test_installing_packages_starts_no_service_and_so_stops_none(sandbox):
    result = sandbox.run(missing="haproxy redis-server")
    assert result.returncode == 0, result.stderr
    calls = sandbox.called()
    assert "apt-get install -y -qq --no-install-recommends haproxy redis-server" in calls
    assert "policy-rc.d says 101" in calls, f"services could start during the install: {calls}"
    touched = [c for c in calls if c.split()[0] in FORBIDDEN]
    assert not touched, f"setup.sh stopped, disabled or killed services: {touched}"
    assert not (sandbox.root / "usr" / "sbin" / "policy-rc.d").exists(), "setup.sh left its policy-rc.d behind"


def test_an_existing_policy_rc_d_is_the_administrators_and_stays(sandbox):
    policy = sandbox.root / "usr" / "sbin" / "policy-rc.d"
    policy.write_text("#!/bin/sh\n# the administrator's\nexit 0\n")
    policy.chmod(0o755)
    result = sandbox.run(missing="redis-server")
    assert result.returncode == 0, result.stderr
    assert policy.read_text() == "#!/bin/sh\n# the administrator's\nexit 0\n"
    assert "is not shoal's" in result.stderr
    assert not [c for c in sandbox.called() if c.split()[0] in FORBIDDEN]


def test_nothing_installed_means_no_apt_and_no_service_touched(sandbox):
    result = sandbox.run()
    assert result.returncode == 0, result.stderr
    assert not [c for c in sandbox.called() if c.split()[0] in ("apt-get", *FORBIDDEN)]


def test_missing_kernel_header_links_are_made(sandbox):
    result = sandbox.run()
    assert result.returncode == 0, result.stderr
    assert os.readlink(sandbox.modules / "build") == f"/usr/src/{HEADERS[0]}"
    assert os.readlink(sandbox.modules / "source") == f"/usr/src/{HEADERS[1]}"


def test_kernel_header_links_that_exist_are_never_overwritten(sandbox):
    sandbox.modules.mkdir(parents=True)
    (sandbox.modules / "build").symlink_to("/nonexistent/headers-of-my-own-kernel")  # broken, but someone's
    (sandbox.modules / "source").symlink_to(sandbox.root / "usr" / "src")              # works, someone's choice
    result = sandbox.run()
    assert result.returncode == 0, result.stderr
    assert os.readlink(sandbox.modules / "build") == "/nonexistent/headers-of-my-own-kernel"
    assert os.readlink(sandbox.modules / "source") == str(sandbox.root / "usr" / "src")
    assert "left as it is" in result.stderr


def test_packages_mode_installs_only_the_packages_named_under_the_same_rules(sandbox):
    result = subprocess.run(["bash", str(sandbox.checkout / "scripts" / "setup.sh"), "--packages", "runc", "containerd"],
                            capture_output=True, text=True, env={**sandbox.env, "MISSING": "containerd"}, timeout=60)
    assert result.returncode == 0, result.stderr
    calls = sandbox.called()
    assert "apt-get install -y -qq --no-install-recommends containerd" in calls
    assert "policy-rc.d says 101" in calls, f"services could start during the install: {calls}"
    assert not [c for c in calls if c.split()[0] in FORBIDDEN]
    assert not sandbox.modules.exists(), "--packages made kernel-header links; it installs packages and nothing else"
