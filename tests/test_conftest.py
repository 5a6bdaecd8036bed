"""The suite's own guards (tests/conftest.py), run on a small suite of their own in a child pytest: a test that
leaves a forwarding sysctl changed fails, naming itself, and the value is put back; a network namespace
of the test process left after every fixture is gone fails the session, naming the module that left it.

The child's guards look at files of this test's own in place of the host's sysctls, so the host's are
never touched."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from support.root import IS_ROOT

GUARDS = Path(__file__).with_name("conftest.py")

FORWARDING_TESTS = '''
import os
import sys
from pathlib import Path

guards = next(m for m in list(sys.modules.values()) if hasattr(m, "host_forwarding_unchanged"))
SYSCTL = Path(os.environ["GUARD_TEST_SYSCTL"])


def pretend_the_session_started_with(value):
    guards.HOST_FORWARDING = {"net.ipv4.ip_forward": SYSCTL}
    guards.FORWARDING_AT_START = {"net.ipv4.ip_forward": value}


def test_that_turns_forwarding_on():
    pretend_the_session_started_with("0")
    SYSCTL.write_text("1\\n")


def test_that_leaves_it_alone():
    pretend_the_session_started_with("0")
    assert SYSCTL.read_text().strip() == "0"
'''

NETNS_TESTS = '''
import os
import subprocess


def test_that_leaks_a_netns():
    subprocess.run(["ip", "netns", "add", f"shoal-guardleak{os.getpid()}"], check=True)
'''


@pytest.fixture(scope="module")
def child(tmp_path_factory):
    """One child session over both small suites: its output, and the netns it was made to leak."""
    if not IS_ROOT:
        pytest.skip("needs root: the guards write back a sysctl and list network namespaces as root")
    tmp_path = tmp_path_factory.mktemp("guards")
    suite = tmp_path / "suite"
    suite.mkdir()
    shutil.copy(GUARDS, suite / "conftest.py")
    (suite / "pytest.ini").write_text("[pytest]\n")
    (suite / "test_forwarding.py").write_text(FORWARDING_TESTS)
    (suite / "test_netns.py").write_text(NETNS_TESTS)
    sysctl = tmp_path / "ip_forward"
    sysctl.write_text("0\n")
    process = subprocess.Popen([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-c",
                                str(suite / "pytest.ini"), "--rootdir", str(suite), str(suite)],
                               cwd=suite, env={**os.environ, "GUARD_TEST_SYSCTL": str(sysctl)},
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    leaked = f"shoal-guardleak{process.pid}"
    try:
        out, _ = process.communicate(timeout=300)
        yield Child(out, process.returncode, sysctl, leaked)
    finally:
        subprocess.run(["ip", "netns", "del", leaked], check=False, capture_output=True)


@dataclass(frozen=True)
class Child:
    out: str
    returncode: int
    sysctl: Path
    leaked_netns: str


def test_a_test_that_leaves_forwarding_on_fails_naming_itself_and_the_value_is_put_back(child):
    assert child.returncode == 1, child.out
    assert "3 passed, 1 error" in child.out, child.out      # the error is the teardown of a test that passed
    assert ("test_forwarding.py::test_that_turns_forwarding_on (or a fixture set up for it) left the host's "
            "net.ipv4.ip_forward at 1 (it was 0); put back") in child.out, child.out
    assert "test_that_leaves_it_alone" not in child.out.split("short test summary")[-1]
    assert child.sysctl.read_text().strip() == "0"


def test_a_network_namespace_left_after_every_fixture_fails_the_session_naming_the_module(child):
    assert Path("/run/netns", child.leaked_netns).exists(), child.out
    assert f"{child.leaked_netns}: first left by test_netns.py" in child.out, child.out
