"""The few libbpf calls bcc does not wrap, through ctypes (libbpf.so.1, package libbpf1).

Pinning, attach/detach/query by fd, bpf links (sk_lookup attaches to a netns
only through a link) and a map type bcc cannot declare for sk_lookup (the
sockhash). Errors become `BpfError` with the errno's name.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno

from node_agent.errors import BpfError, PrerequisiteMissing

BPF_MAP_TYPE_SOCKHASH = 18
BPF_F_ALLOW_MULTI = 2
BPF_OBJ_NAME_LEN = 16

_lib = None


def lib():
    global _lib
    if _lib is None:
        name = ctypes.util.find_library("bpf") or "libbpf.so.1"
        try:
            _lib = ctypes.CDLL(name, use_errno=True)
        except OSError as e:
            raise PrerequisiteMissing(
                "libbpf", f"cannot load {name} ({e})", "install it: apt install libbpf1") from None
        _lib.bpf_map_create.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32, ctypes.c_uint32,
                                        ctypes.c_uint32, ctypes.c_void_p]
        _lib.bpf_map_update_elem.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_uint64]
        _lib.bpf_map_lookup_elem.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p]
        _lib.bpf_map_delete_elem.argtypes = [ctypes.c_int, ctypes.c_void_p]
        _lib.bpf_obj_pin.argtypes = [ctypes.c_int, ctypes.c_char_p]
        _lib.bpf_obj_get.argtypes = [ctypes.c_char_p]
        _lib.bpf_prog_attach.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_uint]
        _lib.bpf_prog_detach2.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        _lib.bpf_prog_query.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_uint32, ctypes.POINTER(ctypes.c_uint32),
                                        ctypes.POINTER(ctypes.c_uint32), ctypes.POINTER(ctypes.c_uint32)]
        _lib.bpf_link_create.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_void_p]
        _lib.bpf_prog_get_fd_by_id.argtypes = [ctypes.c_uint32]
        _lib.bpf_link_get_fd_by_id.argtypes = [ctypes.c_uint32]
        _lib.bpf_obj_get_info_by_fd.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.POINTER(ctypes.c_uint32)]
    return _lib


def _check(result: int, what: str) -> int:
    if result < 0:
        code = -result if result < -1 else (ctypes.get_errno() or 1)
        raise BpfError(what, code)
    return result


def sockhash_create(name: str, max_entries: int) -> int:
    """A sockhash keyed by 16 bytes (an IPv6 address, IPv4 as ::ffff:a.b.c.d, network order), values are sockets."""
    return _check(lib().bpf_map_create(BPF_MAP_TYPE_SOCKHASH, name.encode(), 16, 8, max_entries, None),
                  f"create sockhash {name}")


def map_update(fd: int, key: bytes, value: bytes) -> None:
    k = ctypes.create_string_buffer(key, len(key))
    v = ctypes.create_string_buffer(value, len(value))
    _check(lib().bpf_map_update_elem(fd, k, v, 0), "update map")


def map_lookup(fd: int, key: bytes, value_size: int) -> bytes | None:
    """The value at `key`, or None when there is none (for a sockhash: the socket's cookie)."""
    k = ctypes.create_string_buffer(key, len(key))
    v = ctypes.create_string_buffer(value_size)
    result = lib().bpf_map_lookup_elem(fd, k, v)
    if result < 0 and (-result == errno.ENOENT or ctypes.get_errno() == errno.ENOENT):
        return None
    _check(result, "look up in map")
    return v.raw


def map_delete(fd: int, key: bytes) -> bool:
    k = ctypes.create_string_buffer(key, len(key))
    result = lib().bpf_map_delete_elem(fd, k)
    if result < 0 and (-result == errno.ENOENT or ctypes.get_errno() == errno.ENOENT):
        return False
    _check(result, "delete from map")
    return True


def pin(fd: int, path: str) -> None:
    _check(lib().bpf_obj_pin(fd, path.encode()), f"pin {path}")


def get_pinned(path: str) -> int:
    return _check(lib().bpf_obj_get(path.encode()), f"open pinned object {path}")


def prog_attach(prog_fd: int, target_fd: int, attach_type: int, flags: int = BPF_F_ALLOW_MULTI) -> None:
    _check(lib().bpf_prog_attach(prog_fd, target_fd, attach_type, flags), f"attach (type {attach_type})")


def prog_detach(prog_fd: int, target_fd: int, attach_type: int) -> bool:
    result = lib().bpf_prog_detach2(prog_fd, target_fd, attach_type)
    if result < 0 and errno.ENOENT in (-result, ctypes.get_errno()):
        return False
    _check(result, f"detach (type {attach_type})")
    return True


def prog_query(target_fd: int, attach_type: int) -> list[int]:
    """Ids of the programs attached to a cgroup or netns fd for one attach type."""
    ids = (ctypes.c_uint32 * 64)()
    count = ctypes.c_uint32(64)
    flags = ctypes.c_uint32(0)
    result = lib().bpf_prog_query(target_fd, attach_type, 0, ctypes.byref(flags), ids, ctypes.byref(count))
    _check(result, f"query attached programs (type {attach_type})")
    return list(ids[: count.value])


def link_create(prog_fd: int, target_fd: int, attach_type: int) -> int:
    return _check(lib().bpf_link_create(prog_fd, target_fd, attach_type, None), f"create link (type {attach_type})")


def prog_fd_by_id(prog_id: int) -> int:
    return _check(lib().bpf_prog_get_fd_by_id(prog_id), f"open program {prog_id}")


class _ProgInfo(ctypes.Structure):
    _fields_ = [("type", ctypes.c_uint32), ("id", ctypes.c_uint32), ("tag", ctypes.c_uint8 * 8),
                ("jited_prog_len", ctypes.c_uint32), ("xlated_prog_len", ctypes.c_uint32),
                ("jited_prog_insns", ctypes.c_uint64), ("xlated_prog_insns", ctypes.c_uint64),
                ("load_time", ctypes.c_uint64), ("created_by_uid", ctypes.c_uint32),
                ("nr_map_ids", ctypes.c_uint32), ("map_ids", ctypes.c_uint64),
                ("name", ctypes.c_char * BPF_OBJ_NAME_LEN)]


class _LinkInfo(ctypes.Structure):
    _fields_ = [("type", ctypes.c_uint32), ("id", ctypes.c_uint32), ("prog_id", ctypes.c_uint32),
                ("pad", ctypes.c_uint32), ("netns_ino", ctypes.c_uint32), ("attach_type", ctypes.c_uint32),
                ("rest", ctypes.c_uint8 * 64)]


def prog_info(fd: int) -> tuple[int, str]:
    """(id, name) of a program fd."""
    info = _ProgInfo()
    size = ctypes.c_uint32(ctypes.sizeof(info))
    _check(lib().bpf_obj_get_info_by_fd(fd, ctypes.byref(info), ctypes.byref(size)), "program info")
    return info.id, info.name.decode(errors="replace")


def link_info(fd: int) -> tuple[int, int, int]:
    """(link id, program id, netns inode) of a netns link fd (inode 0 once its netns is gone)."""
    info = _LinkInfo()
    size = ctypes.c_uint32(ctypes.sizeof(info))
    _check(lib().bpf_obj_get_info_by_fd(fd, ctypes.byref(info), ctypes.byref(size)), "link info")
    return info.id, info.prog_id, info.netns_ino
