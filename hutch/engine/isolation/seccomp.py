"""The sandbox's seccomp profile: the OCI ``linux.seccomp`` object every sandbox runs under.

Why an allowlist: a denylist silently allows every system call added to the kernel after
it was written, and new calls are where new attack surface comes from (``io_uring``); an
allowlist fails closed.  Unknown calls answer ``ENOSYS`` (libc then falls back to an older
call, as for ``clone3``), refused ones ``EPERM``; every call of the kernel's tables is
classified here, which the unit test checks against the host's ``unistd`` headers.  What
is refused and why (namespaces, mounts, keyrings, ``bpf``, ``AF_VSOCK``, ...) is in
docs/security.md, "The seccomp profile"; the kernel still checks privileges behind every
allowed call, so this is a second, narrower wall.
"""

from __future__ import annotations

import errno
import platform
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

#: x86_64 hosts also run 32-bit and x32 code; arm64 hosts 32-bit arm code (as in podman).
ARCHITECTURES = [
    "SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32",
    "SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM",
]
#: The architectures a host of each machine type runs; a filter lists only the host's
#: (each listed one adds its own copy of the rules to the BPF program, and a syscall of an
#: architecture not listed kills the process, so nothing gets around the filter).
HOST_ARCHITECTURES = {
    "x86_64": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
    "aarch64": ["SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM"],
}


def host_architectures() -> list[str]:
    return HOST_ARCHITECTURES.get(platform.machine(), list(ARCHITECTURES))


def _words(text: str) -> frozenset[str]:
    return frozenset(text.split())


# Allowed without conditions: files, memory, processes, signals, time (reading), sockets,
# IPC, scheduling, and the 32-bit and arm variants of the same.
ALLOWED = _words("""
_llseek _newselect accept accept4 access alarm arch_prctl arm_fadvise64_64
arm_sync_file_range bind breakpoint brk cachestat cacheflush capget capset chdir chmod chown
chown32 chroot clock_getres clock_getres_time64 clock_gettime clock_gettime64 clock_nanosleep
clock_nanosleep_time64 close close_range connect copy_file_range creat dup dup2 dup3
epoll_create epoll_create1 epoll_ctl epoll_pwait epoll_pwait2 epoll_wait eventfd eventfd2
execve execveat exit exit_group faccessat faccessat2 fadvise64 fadvise64_64 fallocate fchdir
fchmod fchmodat fchmodat2 fchown fchown32 fchownat fcntl fcntl64 fdatasync fgetxattr
file_getattr file_setattr flistxattr flock fork fremovexattr fsetxattr fstat fstat64
fstatat64 fstatfs fstatfs64 fsync ftruncate ftruncate64 futex futex_requeue futex_time64
futex_wait futex_waitv futex_wake futimesat get_mempolicy get_robust_list get_thread_area
get_tls getcpu getcwd getdents getdents64 getegid getegid32 geteuid geteuid32 getgid getgid32
getgroups getgroups32 getitimer getpeername getpgid getpgrp getpid getppid getpriority
getrandom getresgid getresgid32 getresuid getresuid32 getrlimit getrusage getsid getsockname
getsockopt gettid gettimeofday getuid getuid32 getxattr getxattrat inotify_add_watch
inotify_init inotify_init1 inotify_rm_watch io_cancel io_destroy io_getevents
io_pgetevents io_pgetevents_time64 io_setup io_submit ioctl ioprio_get ioprio_set ipc kcmp
kill landlock_add_rule landlock_create_ruleset landlock_restrict_self lchown lchown32
lgetxattr link linkat listen listmount listxattr listxattrat llistxattr lremovexattr lseek
lsetxattr lsm_get_self_attr lsm_list_modules lsm_set_self_attr lstat lstat64 madvise
map_shadow_stack mbind membarrier memfd_create memfd_secret mincore mkdir mkdirat mknod
mknodat mlock mlock2 mlockall mmap mmap2 modify_ldt mprotect mq_getsetattr mq_notify mq_open
mq_timedreceive mq_timedreceive_time64 mq_timedsend mq_timedsend_time64 mq_unlink mremap
mseal msgctl msgget msgrcv msgsnd msync munlock munlockall munmap nanosleep newfstatat nice
oldfstat oldlstat oldolduname oldstat olduname open openat openat2 pause pidfd_getfd
pidfd_open pidfd_send_signal pipe pipe2 pkey_alloc pkey_free pkey_mprotect poll ppoll
ppoll_time64 prctl pread64 preadv preadv2 prlimit64 process_madvise process_mrelease
process_vm_readv process_vm_writev pselect6 pselect6_time64 ptrace pwrite64 pwritev
pwritev2 read readahead readdir readlink readlinkat readv recv recvfrom recvmmsg
recvmmsg_time64 recvmsg remap_file_pages removexattr removexattrat rename renameat
renameat2 restart_syscall rmdir rseq rt_sigaction rt_sigpending rt_sigprocmask
rt_sigqueueinfo rt_sigreturn rt_sigsuspend rt_sigtimedwait rt_sigtimedwait_time64
rt_tgsigqueueinfo sched_get_priority_max sched_get_priority_min sched_getaffinity
sched_getattr sched_getparam sched_getscheduler sched_rr_get_interval
sched_rr_get_interval_time64 sched_setaffinity sched_setattr sched_setparam
sched_setscheduler sched_yield seccomp select semctl semget semop semtimedop
semtimedop_time64 send sendfile sendfile64 sendmmsg sendmsg sendto set_mempolicy
set_mempolicy_home_node set_robust_list set_thread_area set_tid_address set_tls
setdomainname setfsgid setfsgid32 setfsuid setfsuid32 setgid setgid32 setgroups
setgroups32 sethostname setitimer setpgid setpriority setregid setregid32 setresgid
setresgid32 setresuid setresuid32 setreuid setreuid32 setrlimit setsid setsockopt setuid
setuid32 setxattr setxattrat sgetmask shmat shmctl shmdt shmget shutdown sigaction
sigaltstack signal signalfd signalfd4 sigpending sigprocmask sigreturn sigsuspend
socketpair splice ssetmask stat stat64 statfs statfs64 statmount statx symlink symlinkat
sync sync_file_range sync_file_range2 syncfs sysinfo tee tgkill time timer_create
timer_delete timer_getoverrun timer_gettime timer_gettime64 timer_settime timer_settime64
timerfd_create timerfd_gettime timerfd_gettime64 timerfd_settime timerfd_settime64 times
tkill truncate truncate64 ugetrlimit umask uname unlink unlinkat uprobe uretprobe utime
utimensat utimensat_time64 utimes vfork vmsplice wait4 waitid waitpid write writev
""")

# Refused with EPERM (see the module's docstring for why, group by group).
DENIED = _words("""
add_key keyctl request_key bpf perf_event_open userfaultfd
init_module finit_module delete_module create_module get_kernel_syms query_module
kexec_load kexec_file_load reboot
clock_settime clock_settime64 clock_adjtime clock_adjtime64 settimeofday adjtimex stime
mount umount umount2 pivot_root open_tree open_tree_attr move_mount fsopen fsmount fsconfig
fspick mount_setattr
swapon swapoff acct quotactl quotactl_fd lookup_dcookie open_by_handle_at name_to_handle_at
iopl ioperm vm86 vm86old syslog _sysctl sysfs ustat uselib nfsservctl bdflush vhangup
io_uring_setup io_uring_enter io_uring_register fanotify_init fanotify_mark
migrate_pages move_pages pciconfig_iobase pciconfig_read pciconfig_write setns socketcall
""")

#: Entry points with no implementation in the kernel: left to the default (ENOSYS).
UNIMPLEMENTED = _words("""
afs_syscall break epoll_ctl_old epoll_wait_old ftime getpmsg gtty idle lock mpx prof profil
putpmsg security stty tuxcall ulimit usr26 usr32 vserver
""")

#: The namespace flags of clone(2) and unshare(2).  CLONE_NEWTIME shares its bit with
#: clone's exit signal, so it is only checked for unshare.
CLONE_NAMESPACES = {
    "CLONE_NEWNS": 0x00020000, "CLONE_NEWCGROUP": 0x02000000, "CLONE_NEWUTS": 0x04000000,
    "CLONE_NEWIPC": 0x08000000, "CLONE_NEWUSER": 0x10000000, "CLONE_NEWPID": 0x20000000,
    "CLONE_NEWNET": 0x40000000,
}
CLONE_NEWTIME = 0x00000080

#: personality(2) values podman allows: PER_LINUX, PER_LINUX32, UNAME26 (and with
#: PER_LINUX32), and 0xffffffff, which only reads the current persona.
PERSONALITIES = [0x0, 0x8, 0x20000, 0x20008, 0xFFFFFFFF]

AF_VSOCK = 40

#: Syscalls allowed or refused depending on their arguments.
CONDITIONAL = frozenset({"clone", "unshare", "clone3", "personality", "socket"})


class _Model(BaseModel):
    model_config = ConfigDict(populate_by_name=True, extra="forbid")


class SyscallArg(_Model):
    index: int
    value: int
    value_two: int | None = Field(default=None, alias="valueTwo")
    op: str


class Syscall(_Model):
    names: list[str]
    action: str
    errno_ret: int | None = Field(default=None, alias="errnoRet")
    args: list[SyscallArg] | None = None


class Seccomp(_Model):
    default_action: str = Field(alias="defaultAction")
    default_errno_ret: int | None = Field(default=None, alias="defaultErrnoRet")
    architectures: list[str] | None = None
    syscalls: list[Syscall] | None = None


def _arg(index: int, value: int, op: str, value_two: int | None = None) -> SyscallArg:
    return SyscallArg(index=index, value=value, op=op, valueTwo=value_two)


def _namespace_rules(name: str, flags: int) -> list[Syscall]:
    """``name`` (flags in argument 0) allowed when no namespace bit is set; each set bit
    refused with EPERM.  One rule per bit: seccomp compares one value per argument, and
    these rules never overlap with the allowing one, so no runtime has to pick a winner."""
    rules = [Syscall(names=[name], action="SCMP_ACT_ALLOW",
                     args=[_arg(0, flags, "SCMP_CMP_MASKED_EQ", 0)])]
    for bit in sorted(b for b in range(64) if flags >> b & 1):
        rules.append(Syscall(names=[name], action="SCMP_ACT_ERRNO", errnoRet=errno.EPERM,
                             args=[_arg(0, 1 << bit, "SCMP_CMP_MASKED_EQ", 1 << bit)]))
    return rules


def default_profile() -> Seccomp:
    """The profile every sandbox (and every image-build step) runs under."""
    namespaces = sum(CLONE_NAMESPACES.values())
    rules = [
        Syscall(names=sorted(ALLOWED), action="SCMP_ACT_ALLOW"),
        Syscall(names=sorted(DENIED), action="SCMP_ACT_ERRNO", errnoRet=errno.EPERM),
        Syscall(names=["clone3"], action="SCMP_ACT_ERRNO", errnoRet=errno.ENOSYS),
        *_namespace_rules("clone", namespaces),
        *_namespace_rules("unshare", namespaces | CLONE_NEWTIME),
        *(Syscall(names=["personality"], action="SCMP_ACT_ALLOW",
                  args=[_arg(0, value, "SCMP_CMP_EQ")]) for value in PERSONALITIES),
        Syscall(names=["socket"], action="SCMP_ACT_ALLOW",
                args=[_arg(0, AF_VSOCK, "SCMP_CMP_NE")]),
        Syscall(names=["socket"], action="SCMP_ACT_ERRNO", errnoRet=errno.EPERM,
                args=[_arg(0, AF_VSOCK, "SCMP_CMP_EQ")]),
    ]
    return Seccomp(defaultAction="SCMP_ACT_ERRNO", defaultErrnoRet=errno.ENOSYS,
                   architectures=host_architectures(), syscalls=rules)


def profile_json() -> dict[str, Any]:
    """The profile as it appears in ``config.json``."""
    return default_profile().model_dump(by_alias=True, exclude_none=True)
