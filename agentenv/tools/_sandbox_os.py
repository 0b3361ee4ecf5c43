"""Operating-system layers under the RestrictedPython sandbox (standard library + ctypes only).

The sandbox worker imports this module as a script sibling; it never imports `agentenv`. Each function
applies one layer to the calling process and returns None when it took effect, or a short reason when
this kernel or this host cannot provide it (the caller reports the reasons; the host warns once).

Layers, and what each stops on its own:

* `unshare_network`: a fresh network namespace (as root; otherwise a user+network namespace). No
  interface is up, so no address, 127.0.0.1 included, can be reached.
* `drop_to_uid`: a uid of its own per worker (`UID_BASE + pid`) when the host runs as root; clears every
  capability. The worker cannot signal, ptrace or read `/proc/<pid>/fd` of the host or of a sibling worker
  (different uid, and non-dumpable), and it cannot write files it does not own.
* `landlock`: file access only below the Python installation (read, execute) and the worker's private
  temporary directory (everything); no TCP bind/connect (ABI >= 4); no signals and no abstract Unix
  sockets towards processes outside the worker's own domain (ABI >= 6).
* `seccomp_filter`: system calls a Python program has no use for fail with EPERM: sockets, fork/clone/exec,
  kill/tgkill/pidfd, ptrace and process_vm_*, SysV IPC, namespace/mount/keyring/bpf/io_uring calls,
  chmod/chown, set*id, and prlimit on another process (x86-64 only; other architectures warn).
* rlimits (set by the worker): address space, CPU, file size, open files, no new processes (binding once
  the uid is not root), no core dumps; `PR_SET_NO_NEW_PRIVS` and `PR_SET_DUMPABLE=0`.
"""

from __future__ import annotations

import ctypes
import errno
import os
import platform
import struct

__all__ = [
    "UID_BASE", "landlock", "seccomp_filter", "load_seccomp", "unshare_network", "drop_to_uid",
    "set_parent_death_signal", "set_no_new_privs", "set_non_dumpable", "uid_for", "worker_uid_base",
]  # fmt: skip

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long
_libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]

PR_SET_PDEATHSIG, PR_SET_DUMPABLE, PR_SET_SECCOMP, PR_SET_NO_NEW_PRIVS = 1, 4, 22, 38
CLONE_NEWUSER, CLONE_NEWNET = 0x10000000, 0x40000000
# Workers get uid UID_BASE + pid: unique among live processes, far above any real account.
UID_BASE = 1_500_000_000


def _errno_text() -> str:
    code = ctypes.get_errno()
    return f"{errno.errorcode.get(code, code)}: {os.strerror(code)}"


def set_parent_death_signal(sig: int) -> str | None:
    if _libc.prctl(PR_SET_PDEATHSIG, sig, 0, 0, 0) != 0:
        return _errno_text()
    return None


def set_no_new_privs() -> str | None:
    if _libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        return _errno_text()
    return None


def set_non_dumpable() -> str | None:
    if _libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) != 0:
        return _errno_text()
    return None


def unshare_network() -> str | None:
    """Move this (single-threaded) process into a new network namespace with no interface up."""
    flags = CLONE_NEWNET if os.geteuid() == 0 else CLONE_NEWUSER | CLONE_NEWNET
    if _libc.unshare(flags) != 0:
        return f"unshare(CLONE_NEWNET) failed ({_errno_text()})"
    return None


def _uids_mapped(first: int, last: int) -> bool:
    """Whether every uid in [first, last] is mapped in this user namespace (by one line of uid_map)."""
    try:
        with open("/proc/self/uid_map") as fh:
            for line in fh:
                inside, _outside, count = (int(x) for x in line.split())
                if inside <= first and last < inside + count:
                    return True
    except (OSError, ValueError):
        return False
    return False


SHARED_UID = 65534  # "nobody": used by every worker when the per-worker range is not mapped


def worker_uid_base() -> int | None:
    """Read once by the zygote: UID_BASE when UID_BASE + any pid is a mapped uid (each worker then has a
    uid of its own), SHARED_UID when only that one is, None when the host is not root."""
    if os.geteuid() != 0:
        return None
    try:
        with open("/proc/sys/kernel/pid_max") as fh:
            pid_max = int(fh.read())
    except (OSError, ValueError):
        pid_max = 1 << 22
    if _uids_mapped(UID_BASE, UID_BASE + pid_max):
        return UID_BASE
    return SHARED_UID if _uids_mapped(SHARED_UID, SHARED_UID) else None


def uid_for(pid: int, base: int | None) -> int | None:
    """The uid of worker `pid`, given the zygote's `worker_uid_base()`."""
    if base is None:
        return None
    return SHARED_UID if base == SHARED_UID else base + pid


def drop_to_uid(uid: int) -> str | None:
    """setgroups([]), setgid, setuid (all of real, effective, saved): irreversible, drops every capability."""
    try:
        os.setgroups([])
        os.setresgid(uid, uid, uid)
        os.setresuid(uid, uid, uid)
    except OSError as exc:
        return f"setuid({uid}) failed ({exc.strerror})"
    return None


# -- Landlock ------------------------------------------------------------------------------------------
_SYS_CREATE_RULESET, _SYS_ADD_RULE, _SYS_RESTRICT_SELF = 444, 445, 446  # same on every architecture
_FS_EXECUTE, _FS_WRITE_FILE, _FS_READ_FILE, _FS_READ_DIR = 1 << 0, 1 << 1, 1 << 2, 1 << 3
_FS_BITS_BY_ABI = {1: (1 << 13) - 1, 2: (1 << 14) - 1, 3: (1 << 15) - 1, 4: (1 << 15) - 1, 5: (1 << 16) - 1}
_NET_BIND_TCP, _NET_CONNECT_TCP = 1 << 0, 1 << 1
_SCOPE_ABSTRACT_UNIX_SOCKET, _SCOPE_SIGNAL = 1 << 0, 1 << 1
_READ_ONLY = _FS_EXECUTE | _FS_READ_FILE | _FS_READ_DIR
_FILE_RIGHTS = _FS_EXECUTE | _FS_WRITE_FILE | _FS_READ_FILE | (1 << 14) | (1 << 15)


def landlock_abi() -> int:
    version = _libc.syscall(_SYS_CREATE_RULESET, None, 0, 1)  # LANDLOCK_CREATE_RULESET_VERSION
    return int(version) if version > 0 else 0


def landlock(read_paths: list[str], write_paths: list[str]) -> tuple[str | None, int]:
    """Restrict this process: read+execute below `read_paths`, everything below `write_paths`, nothing
    else; no TCP (ABI >= 4); no signals or abstract sockets out of its domain (ABI >= 6).

    Needs `PR_SET_NO_NEW_PRIVS` first (or CAP_SYS_ADMIN). Returns (reason or None, ABI used)."""
    abi = landlock_abi()
    if abi < 1:
        return "Landlock is not available in this kernel", 0
    fs_bits = _FS_BITS_BY_ABI.get(abi, _FS_BITS_BY_ABI[5])
    if abi >= 6:
        attr = struct.pack("=QQQ", fs_bits, _NET_BIND_TCP | _NET_CONNECT_TCP, _SCOPE_ABSTRACT_UNIX_SOCKET | _SCOPE_SIGNAL)
    elif abi >= 4:
        attr = struct.pack("=QQ", fs_bits, _NET_BIND_TCP | _NET_CONNECT_TCP)
    else:
        attr = struct.pack("=Q", fs_bits)
    buf = ctypes.create_string_buffer(attr, len(attr))
    ruleset = _libc.syscall(_SYS_CREATE_RULESET, buf, len(attr), 0)
    if ruleset < 0:
        return f"landlock_create_ruleset failed ({_errno_text()})", abi
    try:
        for paths, access in ((read_paths, _READ_ONLY), (write_paths, fs_bits)):
            for path in paths:
                try:
                    fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
                except OSError:
                    continue  # a path that does not exist needs no rule
                try:
                    allowed = access if os.path.isdir(path) else access & _FILE_RIGHTS
                    rule = ctypes.create_string_buffer(struct.pack("=Qi", allowed & fs_bits, fd), 12)
                    if _libc.syscall(_SYS_ADD_RULE, ruleset, 1, rule, 0) != 0:  # LANDLOCK_RULE_PATH_BENEATH
                        return f"landlock_add_rule({path}) failed ({_errno_text()})", abi
                finally:
                    os.close(fd)
        if _libc.syscall(_SYS_RESTRICT_SELF, ruleset, 0) != 0:
            return f"landlock_restrict_self failed ({_errno_text()})", abi
    finally:
        os.close(ruleset)
    return None, abi


# -- seccomp -------------------------------------------------------------------------------------------
_AUDIT_ARCH_X86_64 = 0xC000003E
_X32_SYSCALL_BIT = 0x40000000
_RET_ALLOW, _RET_ERRNO_EPERM = 0x7FFF0000, 0x00050000 | errno.EPERM
_LD_W_ABS, _JEQ_K, _JGE_K, _RET_K = 0x20, 0x15, 0x35, 0x06
_PRLIMIT64 = 302
# x86-64 numbers. Grouped by what they would let a program do.
_DENIED_X86_64 = sorted(set(
    [41, 42, 43, 44, 46, 49, 50, 53, 288, 299, 307]        # sockets: socket connect accept sendto sendmsg bind listen socketpair accept4 recvmmsg sendmmsg
    + [56, 57, 58, 59, 322, 435]                            # clone fork vfork execve execveat clone3
    + [62, 200, 234, 129, 297, 424, 434, 438]               # kill tkill tgkill rt_sigqueueinfo rt_tgsigqueueinfo pidfd_send_signal pidfd_open pidfd_getfd
    + [101, 310, 311, 312, 440, 448]                        # ptrace process_vm_readv/writev kcmp process_madvise process_mrelease
    + [29, 30, 31, 64, 65, 66, 68, 69, 70, 71, 220]          # SysV shm/sem/msg (+ semtimedop)
    + [240, 241, 242, 243, 244, 245]                        # POSIX message queues
    + [90, 91, 92, 93, 94, 260, 268, 452]                   # chmod fchmod chown fchown lchown fchownat fchmodat fchmodat2
    + [105, 106, 113, 114, 116, 117, 119, 122, 123, 126]    # setuid setgid setreuid setregid setgroups setresuid setresgid setfsuid setfsgid capset
    + [109, 112, 141]                                       # setpgid setsid setpriority
    + [272, 308, 155, 161, 165, 166, 428, 429, 430, 431, 432, 433, 442]  # unshare setns pivot_root chroot mount umount2 new mount API
    + [248, 249, 250, 321, 298, 323, 425, 426, 427, 319, 447]  # keyrings bpf perf_event_open userfaultfd io_uring memfd_create memfd_secret
    + [134, 135, 136, 139, 153, 154, 156, 159, 163, 164, 167, 168, 169, 170, 171, 172, 173, 175, 176, 179, 227, 305]  # legacy/admin
    + [246, 320, 313, 303, 304, 300, 301, 256, 279]          # kexec, modules, open_by_handle, fanotify, migrate/move_pages
    + [444, 445, 446]                                       # landlock (already applied)
))  # fmt: skip


def seccomp_filter() -> tuple[bytes | None, str | None]:
    """The BPF program (as sock_filter bytes) of the deny list, or (None, reason) off x86-64."""
    if platform.machine() not in ("x86_64", "AMD64") or struct.calcsize("P") != 8:
        return None, f"seccomp deny list is written for x86-64, not {platform.machine()}"
    ins: list[tuple[int, int, int, int]] = []
    denied = _DENIED_X86_64
    n = len(denied)
    # layout: [0] ld arch, [1] jeq x86-64, [2] ret errno (foreign arch), [3] ld nr, [4] jge x32 -> errno,
    # [5] jeq prlimit64 -> check, [6 .. 6+n) jeq denied -> errno, [6+n] ret allow, [7+n] ret errno,
    # [8+n ..] prlimit64: allow only pid 0 (self): args[0] low and high words both zero.
    errno_at, check_at = 7 + n, 8 + n
    ins.append((_LD_W_ABS, 0, 0, 4))
    ins.append((_JEQ_K, 1, 0, _AUDIT_ARCH_X86_64))
    ins.append((_RET_K, 0, 0, _RET_ERRNO_EPERM))
    ins.append((_LD_W_ABS, 0, 0, 0))
    ins.append((_JGE_K, errno_at - 5, 0, _X32_SYSCALL_BIT))
    ins.append((_JEQ_K, check_at - 6, 0, _PRLIMIT64))
    for i, nr in enumerate(denied):
        at = 6 + i
        ins.append((_JEQ_K, errno_at - (at + 1), 0, nr))
    ins.append((_RET_K, 0, 0, _RET_ALLOW))
    ins.append((_RET_K, 0, 0, _RET_ERRNO_EPERM))
    ins.append((_LD_W_ABS, 0, 0, 16))  # args[0], low word
    ins.append((_JEQ_K, 0, 3, 0))
    ins.append((_LD_W_ABS, 0, 0, 20))  # args[0], high word
    ins.append((_JEQ_K, 0, 1, 0))
    ins.append((_RET_K, 0, 0, _RET_ALLOW))
    ins.append((_RET_K, 0, 0, _RET_ERRNO_EPERM))
    if any(jt > 255 for _c, jt, _jf, _k in ins):
        return None, "seccomp program too long"
    return b"".join(struct.pack("=HBBI", *i) for i in ins), None


def load_seccomp(program: bytes) -> str | None:
    """Install `program` for this thread (needs PR_SET_NO_NEW_PRIVS). Irreversible."""
    count = len(program) // 8
    filters = ctypes.create_string_buffer(program, len(program))
    fprog = struct.pack("=HxxxxxxQ", count, ctypes.addressof(filters))
    fbuf = ctypes.create_string_buffer(fprog, len(fprog))
    if _libc.prctl(PR_SET_SECCOMP, 2, ctypes.addressof(fbuf), 0, 0) != 0:  # SECCOMP_MODE_FILTER
        return f"seccomp filter failed ({_errno_text()})"
    return None
