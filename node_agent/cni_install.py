"""Installing shoal-cni on the node: the plugin into the CNI bin dir, and an entry chained into the conflist.

The runtime uses the first network configuration, by name, in the CNI conf
dir (what containerd and CRI-O do). `chain()` appends shoal's entry to its
`plugins` (a single-plugin `.conf` is not rewritten: the agent refuses it,
saying so, rather than change the file's kind); `unchain()` takes the entry
out. The bytes of the file as it was before the agent chained it are kept in
the agent's state dir, so removal puts back exactly those bytes when nothing
else changed the file meanwhile; when something did, only shoal's entry is
taken out, and the rest is kept as that other writer left it.

Both are idempotent, and `ensure()` runs on every resync, so a CNI that
rewrites its conflist (as some do when their own pod restarts) is chained again.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from node_agent.errors import NodeAgentError

PLUGIN_TYPE = "shoal-cni"
PLUGIN_SOURCE = Path(__file__).with_name("cni_plugin.py")
DEFAULT_BIN_DIR = Path("/opt/cni/bin")
DEFAULT_CONF_DIR = Path("/etc/cni/net.d")


class CniInstallError(NodeAgentError):
    """The CNI bin or conf dir is not as shoal-cni needs it."""


@dataclass(frozen=True)
class CniSettings:
    bin_dir: Path
    conf_dir: Path
    socket: Path
    enrollment_file: Path
    state_dir: Path  # where the conflist's bytes before chaining are kept

    def entry(self) -> dict:
        return {"type": PLUGIN_TYPE, "socket": str(self.socket), "enrollment_file": str(self.enrollment_file)}


# -- the decisions (no I/O) ---------------------------------------------------------


def chained(text: bytes, entry: dict) -> bytes | None:
    """The conflist with shoal's entry last in its plugins; None when it is there already, as `entry` says."""
    conf = _parse(text)
    plugins = conf["plugins"]
    ours = [p for p in plugins if isinstance(p, dict) and p.get("type") == PLUGIN_TYPE]
    if ours == [entry] and plugins[-1] == entry:
        return None
    conf["plugins"] = [p for p in plugins if not (isinstance(p, dict) and p.get("type") == PLUGIN_TYPE)] + [entry]
    return (json.dumps(conf, indent=2) + "\n").encode()


def unchained(text: bytes, original: bytes | None) -> bytes | None:
    """The conflist without shoal's entry (the original bytes when that is what remains); None if not chained."""
    conf = _parse(text)
    plugins = [p for p in conf["plugins"] if not (isinstance(p, dict) and p.get("type") == PLUGIN_TYPE)]
    if len(plugins) == len(conf["plugins"]):
        return None
    conf["plugins"] = plugins
    if original is not None:
        try:
            if json.loads(original) == conf:
                return original
        except ValueError:
            pass
    return (json.dumps(conf, indent=2) + "\n").encode()


def _parse(text: bytes) -> dict:
    try:
        conf = json.loads(text)
    except ValueError as e:
        raise CniInstallError(f"the CNI network configuration is not JSON ({e}); fix it, the runtime cannot read "
                              f"it either") from None
    if not isinstance(conf, dict) or not isinstance(conf.get("plugins"), list):
        raise CniInstallError("the CNI network configuration has no `plugins` list: shoal-cni chains only into a "
                              ".conflist; convert the single-plugin .conf into a .conflist")
    return conf


def primary_conflist(conf_dir: Path) -> Path | None:
    """The network configuration a runtime would use: the first .conflist/.conf/.json by name."""
    if not conf_dir.is_dir():
        return None
    names = sorted(p for p in conf_dir.iterdir() if p.suffix in (".conflist", ".conf", ".json") and p.is_file())
    return names[0] if names else None


# -- the doing ------------------------------------------------------------------------


def _write_atomically(path: Path, data: bytes, mode: int = 0o644) -> None:
    tmp = path.with_name(f".{path.name}.shoal-tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.chmod(tmp, mode)
    os.replace(tmp, path)


def _backup(settings: CniSettings, conflist: Path) -> Path:
    return settings.state_dir / "cni" / f"{conflist.name}.orig"


def install_plugin(settings: CniSettings) -> Path:
    """Copies the plugin into the bin dir as `shoal-cni` (replaced atomically: a runtime may be running it)."""
    if not settings.bin_dir.is_dir():
        raise CniInstallError(f"the CNI bin dir {settings.bin_dir} does not exist; mount the node's CNI bin dir "
                              f"into the node agent (--cni-bin-dir)")
    target = settings.bin_dir / PLUGIN_TYPE
    _write_atomically(target, PLUGIN_SOURCE.read_bytes(), 0o755)
    return target


def ensure(settings: CniSettings) -> Path:
    """Plugin installed and chained into the primary conflist; returns that conflist."""
    conflist = primary_conflist(settings.conf_dir)
    if conflist is None:
        raise CniInstallError(f"no CNI network configuration in {settings.conf_dir}; the node's own CNI writes one "
                              f"first (shoal-cni chains after it), or point --cni-conf-dir at where it is")
    install_plugin(settings)
    text = conflist.read_bytes()
    new = chained(text, settings.entry())
    if new is not None:
        if unchained(text, None) is None:  # not chained yet: the file as the node's CNI wrote it
            backup = _backup(settings, conflist)
            backup.parent.mkdir(parents=True, exist_ok=True)
            _write_atomically(backup, text, 0o600)
        _write_atomically(conflist, new, conflist.stat().st_mode & 0o777)
    return conflist


def remove(settings: CniSettings) -> list[str]:
    """Takes shoal's entry out of every conflist in the conf dir and the plugin out of the bin dir; what it did."""
    done = []
    if settings.conf_dir.is_dir():
        for conflist in sorted(settings.conf_dir.iterdir()):
            if conflist.suffix not in (".conflist", ".conf", ".json") or not conflist.is_file():
                continue
            backup = _backup(settings, conflist)
            original = backup.read_bytes() if backup.exists() else None
            try:
                new = unchained(conflist.read_bytes(), original)
            except CniInstallError:
                continue  # not ours to judge, and nothing of ours can be in it
            if new is not None:
                _write_atomically(conflist, new, conflist.stat().st_mode & 0o777)
                done.append(f"unchained {conflist}")
            backup.unlink(missing_ok=True)
    plugin = settings.bin_dir / PLUGIN_TYPE
    if plugin.exists():
        plugin.unlink()
        done.append(f"removed {plugin}")
    settings.enrollment_file.unlink(missing_ok=True)
    shutil.rmtree(settings.state_dir / "cni", ignore_errors=True)
    return done
