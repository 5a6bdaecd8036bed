"""A containerd of the test's own, as a node's runtime: for the image's tests and the CRI's.

It has its own root, state, socket and runc root under a temporary directory, and the
config a local cluster's node has (shoal.local.runtime_containerd.config_toml: the plugins
that need what this machine lacks disabled, a CRI plugin that points at runc); `ctr` drives it (no kubelet here), and it runs containers
with runc and the cgroupfs driver. This machine's cgroups are hybrid (v1 controllers and
a v2 tree without controllers) and its PID 1 is not systemd, so cgroupfs is the only
driver that works here; on a systemd node the CRI's runc options say `SystemdCgroup = true`
(the kubelet's cgroupDriver: systemd), and containerd places pods in systemd slices.

`stop()` kills every task, removes every container, stops containerd, and returns what is
left behind, which must be nothing: processes, mounts under the temporary directory, the
cgroups its containers were placed in, and /run/containerd (which containerd 1.6's shims
use for their sockets whatever the config says) when it was not there before.
"""

from __future__ import annotations

import os
import signal
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import shoal
from shoal.local import runtime_containerd
from shoal.local.containerd_down import remove_empty_tree
from support.polling import eventually

REPO = Path(__file__).resolve().parents[2]
IMAGE = f"docker.io/library/shoal:{shoal.__version__}"
# `make image`'s archive; SHOAL_IMAGE_ARCHIVE names another one of the same image (e.g. one a
# `docker build` made, saved as an OCI archive named docker.io/library/shoal:<version>).
ARCHIVE = Path(os.environ.get("SHOAL_IMAGE_ARCHIVE", REPO / "build" / f"shoal-{shoal.__version__}.oci.tar"))
NAMESPACE = "shoal-image-test"
SHIM_STATE = Path("/run/containerd")  # containerd 1.6's shims put their sockets in /run/containerd/s
CNI_CACHE = Path("/var/lib/cni")  # libcni's result cache, where the CRI plugin keeps each sandbox's ADD result
CGROUP_V1 = Path("/sys/fs/cgroup")
# The capabilities containerd gives a container by default (oci.defaultUnixCaps).
DEFAULT_CAPS = ("CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER", "CAP_MKNOD", "CAP_NET_RAW",
                "CAP_SETGID", "CAP_SETUID", "CAP_SETFCAP", "CAP_SETPCAP", "CAP_NET_BIND_SERVICE", "CAP_SYS_CHROOT",
                "CAP_KILL", "CAP_AUDIT_WRITE")


def node_paths(base: Path) -> runtime_containerd.NodePaths:
    """The paths of a test's containerd, as the local cluster lays out a node's: under `base`, the CNI
    config in base/cni/net.d and the plugins linked in base/cni/bin."""
    return runtime_containerd.NodePaths(base, base / "cni", "shoal-test", base / "root")


@dataclass
class Containerd:
    base: Path
    sandbox_image: str = ""  # the CRI's pause image (imported by the caller); "" keeps containerd's default
    process: subprocess.Popen | None = None
    cgroup_parent: str = ""
    shim_state_existed: bool = True
    cni_cache_existed: bool = True
    containers: list[str] = field(default_factory=list)
    stopped: bool = False
    net_ns: str = ""  # a named netns to run containerd in (its CNI plugins then work there, not on the host)

    @property
    def socket(self) -> Path:
        return self.base / "containerd.sock"

    def ctr(self, *args: str, timeout: float = 300, check: bool = True) -> subprocess.CompletedProcess:
        result = subprocess.run(["ctr", "--address", str(self.socket), "--namespace", NAMESPACE, *args],
                                capture_output=True, text=True, timeout=timeout)
        if check and result.returncode != 0:
            raise AssertionError(f"ctr {' '.join(args)} exited {result.returncode}: {result.stderr.strip()}")
        return result

    def start(self) -> None:
        self.shim_state_existed = SHIM_STATE.exists()
        self.cni_cache_existed = CNI_CACHE.exists()
        self.cgroup_parent = f"shoal-image-test-{os.getpid()}"
        paths = node_paths(self.base)
        runtime_containerd.ensure_cni_dirs(paths)
        # The product's own config builder: the tests' containerd is configured as a cluster's node is.
        paths.config.write_text(runtime_containerd.config_toml(paths, self.sandbox_image))
        (self.base / "fifo").mkdir()
        log = open(self.base / "containerd.log", "wb")
        argv = ["containerd", "--config", str(paths.config)]
        if self.net_ns:  # nsenter, not `ip netns exec`: the mount namespace stays the host's, where the CRI pins netns
            argv = ["nsenter", f"--net=/run/netns/{self.net_ns}", *argv]
        self.process = subprocess.Popen(argv, stdout=log,
                                        stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        eventually(lambda: self.process.poll() is not None or
                   self.ctr("version", check=False, timeout=10).returncode == 0, timeout=60,
                   what=lambda: f"containerd to answer on {self.socket}; its log:\n{self.log()}")
        if self.process.poll() is not None:
            raise AssertionError(f"containerd exited {self.process.returncode}; its log:\n{self.log()}")

    def log(self) -> str:
        try:
            return (self.base / "containerd.log").read_text()[-4000:]
        except OSError:
            return ""

    def run_args(self, name: str, *, net_ns: str | None = None, privileged: bool = False,
                 caps: tuple[str, ...] = (), mounts: tuple[tuple[str, str, str], ...] = (),
                 env: tuple[str, ...] = ()) -> list[str]:
        """`ctr run` options for a container `name` of the image, placed in a cgroup of the test's own."""
        args = ["run", "--runc-root", str(self.base / "runc"), "--fifo-dir", str(self.base / "fifo"),
                "--cgroup", f"/{self.cgroup_parent}/{name}"]
        if net_ns is not None:
            args += ["--with-ns", f"network:/run/netns/{net_ns}"]
        if privileged:
            args.append("--privileged")
        if caps:  # the manifest's drop: ["ALL"] and add: caps (ctr 1.6 takes no "ALL")
            for cap in DEFAULT_CAPS:
                if cap not in caps:
                    args += ["--cap-drop", cap]
            for cap in caps:
                args += ["--cap-add", cap]
        for source, target, options in mounts:
            args += ["--mount", f"type=bind,src={source},dst={target},options={options}"]
        for variable in env:
            args += ["--env", variable]
        return args

    def run(self, name: str, command: list[str], **options) -> subprocess.CompletedProcess:
        """Runs `command` in a new container of the image, as the image's user, to its end."""
        self.containers.append(name)
        result = self.ctr(*self.run_args(name, **options), "--rm", IMAGE, name, *command, check=False)
        self.containers.remove(name)
        return result

    def start_container(self, name: str, command: list[str], **options) -> None:
        """Starts `command` in a new container, as the image's user; its output goes to NAME.log."""
        self.containers.append(name)
        self.ctr(*self.run_args(name, **options), "--detach", "--log-uri", f"file://{self.base / name}.log",
                 IMAGE, name, *command)

    def start_as_root(self, name: str, command: list[str] | None = None, **options) -> subprocess.CompletedProcess | None:
        """A container whose part runs as root, as a manifest's runAsUser: 0 has it. `ctr run`
        (containerd 1.6) cannot choose the user, so the container's first process holds it
        and `ctr tasks exec --user 0` runs the part in it, with the container's namespaces,
        mounts and capabilities. With `command`, the part runs on (output in NAME.log);
        without, the caller execs what it wants with `exec`."""
        self.containers.append(name)
        self.ctr(*self.run_args(name, **options), "--detach", IMAGE, name, "sleep", "infinity")
        if command is not None:
            self.ctr("tasks", "exec", "--user", "0", "--exec-id", name, "--detach", "--log-uri", f"file://{self.base / name}.log", name, *command)
        return None

    def exec_as_root(self, name: str, command: list[str]) -> subprocess.CompletedProcess:
        """Runs `command` as root in container `name` to its end: its output and exit status."""
        return self.ctr("tasks", "exec", "--user", "0", "--exec-id", f"{name}-exec", "--fifo-dir",
                        str(self.base / "fifo"), name, *command, check=False)

    def container_log(self, name: str) -> str:
        try:
            return (self.base / f"{name}.log").read_text()[-4000:]
        except OSError:
            return ""

    def task_pid(self, name: str) -> int:
        for line in self.ctr("tasks", "ls").stdout.splitlines()[1:]:
            words = line.split()
            if words and words[0] == name:
                return int(words[1])
        raise AssertionError(f"no task {name} in containerd's task list")

    def process_in(self, name: str, command: str) -> int:
        """The pid of the process in container `name` whose command line holds `command`."""
        for line in self.ctr("tasks", "ps", name).stdout.splitlines()[1:]:
            pid = line.split()[0]
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if command in cmdline:
                return int(pid)
        raise AssertionError(f"no process {command!r} in container {name}")

    def remove_container(self, name: str) -> None:
        self.ctr("tasks", "kill", "--signal", "SIGKILL", name, check=False)
        eventually(lambda: self.ctr("tasks", "delete", name, check=False).returncode == 0
                   or name not in self.ctr("tasks", "ls").stdout, timeout=60, what=f"task {name} to be deleted")
        self.ctr("containers", "delete", name, check=False)
        if name in self.containers:
            self.containers.remove(name)

    def stop(self) -> list[str]:
        """Removes every container, stops containerd, removes the cgroup parents the test chose
        and /run/containerd if it was not there before (empty directories only), and names
        whatever is left behind."""
        if self.stopped:
            return []
        self.stopped = True
        for name in list(self.containers):
            self.remove_container(name)
        if self.process is not None and self.process.poll() is None:
            self.ctr("images", "rm", IMAGE, check=False)
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        for controller in CGROUP_V1.iterdir():
            remove_empty_tree(controller / self.cgroup_parent)
        if not self.shim_state_existed:
            remove_empty_tree(SHIM_STATE)
        if not self.cni_cache_existed:
            remove_empty_tree(CNI_CACHE)
        return self.leftovers()

    def leftovers(self) -> list[str]:
        found = []
        base = str(self.base)
        for pid in os.listdir("/proc"):
            if not pid.isdigit() or int(pid) == os.getpid():
                continue
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if base in cmdline:
                found.append(f"process {pid}: {cmdline.strip()}")
        for line in Path("/proc/self/mountinfo").read_text().splitlines():
            mount_point = line.split()[4]
            if mount_point.startswith(base):
                found.append(f"mount {mount_point}")
        for controller in CGROUP_V1.iterdir():
            if (controller / self.cgroup_parent).exists():
                found.append(f"cgroup {controller / self.cgroup_parent}")
        if not self.shim_state_existed and SHIM_STATE.exists():
            found.append(f"{SHIM_STATE} (it was not there before containerd started)")
        if not self.cni_cache_existed and CNI_CACHE.exists():
            found.append(f"{CNI_CACHE} (it was not there before containerd started)")
        return found
