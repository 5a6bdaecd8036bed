"""Compiles bpf/redirect.c with bcc and pins the result: run as a short-lived child of the node agent.

    python -m node_agent.ebpf_build SOURCE PIN_DIR

bcc and the LLVM it links take well over 100 MiB once loaded and never give
it back; the agent only needs the compiled programs, which outlive their
loader once pinned in bpffs. So the agent runs this in a child process
(`node_agent.ebpf.EbpfRedirector.load`), which compiles, loads and pins every
program and map into PIN_DIR, and exits; the agent then opens the pins as a
restarted agent does. bcc is imported here only.

Builds for one agent directory take turns (a flock on it), so the build of an
agent killed meanwhile never races the next one's. On failure PIN_DIR is
removed (no half-pinned set is left to be taken for a whole one), the reason
goes to stderr, and the exit status says which kind: EXIT_NOT_COMPILABLE (bcc
missing or the C does not compile: a prerequisite) or EXIT_REFUSED (the
kernel refused a program or a pin).
"""

from __future__ import annotations

import fcntl
import os
import shutil
import sys
from pathlib import Path

from node_agent import libbpf

EXIT_NOT_COMPILABLE, EXIT_REFUSED = 3, 4
SOCKHASH_ENTRIES = 4096  # pods (IPs) per node the inbound steering can hold
MAPS_PINNED = ("orig_by_port", "orig_by_sock", "uncaptured")


def compile_and_pin(source: Path, prog_dir: Path) -> int:
    """Compiles `source`, pins each program of `node_agent.ebpf_programs.PROGRAMS` and the maps; returns an exit status.

    One build at a time per agent directory (an exclusive flock on it): a build whose agent was killed
    (kill -9 leaves the child running) finishes before the restarted agent's build starts, which then
    finds the whole set pinned and builds nothing."""
    from node_agent.ebpf_programs import PROGRAMS  # the one list, shared with the agent
    prog_dir.parent.mkdir(parents=True, exist_ok=True)
    lock = os.open(prog_dir.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if all((prog_dir / name).exists() for name in [*PROGRAMS, "sockhash", *MAPS_PINNED]):
            return 0  # an earlier build (an orphan of a killed agent) pinned the whole set
        return _build(source, prog_dir)
    finally:
        os.close(lock)


def _build(source: Path, prog_dir: Path) -> int:
    from node_agent.ebpf_programs import PROGRAMS, source_text
    try:
        import bcc
    except ImportError as e:
        print(f"the Python module bcc does not import ({e})", file=sys.stderr)
        return EXIT_NOT_COMPILABLE
    if prog_dir.exists():
        shutil.rmtree(prog_dir)  # a half-pinned set from a crash during an earlier build
    prog_dir.mkdir(parents=True)
    sockhash = libbpf.sockhash_create("shoal_inbound", SOCKHASH_ENTRIES)
    try:
        module = bcc.BPF(text=source_text(sockhash, source).encode())
    except Exception as e:
        shutil.rmtree(prog_dir, ignore_errors=True)
        print(f"bcc could not compile {source}: {e}", file=sys.stderr)
        return EXIT_NOT_COMPILABLE
    try:
        for name, (prog_type, attach_type) in PROGRAMS.items():
            fn = module.load_func(name.encode(), prog_type, attach_type=attach_type)
            libbpf.pin(fn.fd, str(prog_dir / name))
        libbpf.pin(sockhash, str(prog_dir / "sockhash"))
        for table in MAPS_PINNED:
            libbpf.pin(bcc.libbcc.lib.bpf_table_fd(module.module, table.encode()), str(prog_dir / table))
    except Exception as e:  # BpfError from a pin; bcc raises plain Exception when the verifier says no
        shutil.rmtree(prog_dir, ignore_errors=True)
        print(f"the kernel refused shoal's eBPF programs: {e}", file=sys.stderr)
        return EXIT_REFUSED
    finally:
        module.cleanup()  # the pins keep the programs and maps alive after this process is gone
    return 0


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2:
        print("usage: python -m node_agent.ebpf_build SOURCE PIN_DIR", file=sys.stderr)
        return 2
    return compile_and_pin(Path(args[0]), Path(args[1]))


if __name__ == "__main__":
    raise SystemExit(main())
