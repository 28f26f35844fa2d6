#!/usr/bin/env bash
# Make a Debian 12 host ready for hutch, the way a stock distribution already is.
# Idempotent; run as root.  What it does:
#   - installs the Debian packages hutch runs (crun, runc, uidmap, mmdebstrap, ...) and the
#     peers the benchmarks compare against (podman, bubblewrap);
#   - creates the unprivileged test user (default: hutchtest) with a subuid/subgid range;
#   - on hybrid-cgroup hosts mounts the hugetlb v1 controller so crun can run;
#   - makes /dev/net/tun usable by unprivileged users (mode 0666, as on stock distributions);
#   - on cgroup v1 hosts delegates a subtree of the memory, cpu and pids controllers to the
#     test user (/sys/fs/cgroup/<controller>/hutch/<user>), so its engine can enforce
#     sandbox limits.  cgroup v2 hosts delegate with systemd instead (docs/limits.md).
set -euo pipefail

TEST_USER="${HUTCH_TEST_USER:-hutchtest}"
PACKAGES=(
  crun runc uidmap mmdebstrap umoci skopeo slirp4netns fuse-overlayfs iproute2 tar gzip
  python3 python3-venv python3-dev sqlite3 ca-certificates rsync util-linux procps
  podman bubblewrap docker-registry zstd nftables openssl patchelf openssh-client
)
# Started by the remote-engine tests on loopback ports of their own, never as a service:
# installed with the service kept from starting (policy-rc.d), and left disabled.
SERVER_PACKAGES=(openssh-server)

if [ "$(id -u)" != 0 ]; then
  echo "setup-host.sh must run as root" >&2
  exit 1
fi

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup-host: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

for p in "${SERVER_PACKAGES[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    echo "setup-host: installing $p (its service not started)"
    export DEBIAN_FRONTEND=noninteractive
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
    chmod +x /usr/sbin/policy-rc.d
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "$p" >/dev/null || { rm -f /usr/sbin/policy-rc.d; exit 1; }
    rm -f /usr/sbin/policy-rc.d
    if command -v systemctl >/dev/null && [ -d /run/systemd/system ]; then
      systemctl disable --now ssh.service ssh.socket >/dev/null 2>&1 || true
    fi
  fi
done

if ! id "$TEST_USER" >/dev/null 2>&1; then
  echo "setup-host: creating user $TEST_USER"
  useradd --create-home --shell /bin/bash "$TEST_USER"
fi
# Without a password, but not locked: sshd lets no locked account in, even with a key (the
# remote-engine tests log in over ssh with a throwaway key).
if [ "$(getent shadow "$TEST_USER" | cut -d: -f2)" = "!" ]; then
  usermod -p '*' "$TEST_USER"
fi
# Each sandbox takes a slice of about 1025 of these ids (docs/security.md): Debian's default
# 65536 hold 61 sandboxes at once, fewer than the suite's hostile battery runs together, so
# the test user gets 1 Mi ids (959 sandboxes), high enough to miss other users' ranges.
# A smaller range of another user is replaced only with HUTCH_GROW_SUBIDS=1: rootless
# podman's stored files depend on it.
SUBIDS=1000000000-1001048575
GROW="${HUTCH_GROW_SUBIDS:-$([ "$TEST_USER" = hutchtest ] && echo 1 || echo 0)}"
for file in /etc/subuid /etc/subgid; do
  count="$(awk -F: -v u="$TEST_USER" '$1 == u { print $3; exit }' "$file" 2>/dev/null || true)"
  if [ -z "$count" ] || { [ "$GROW" = 1 ] && [ "$count" -lt 1048576 ]; }; then
    sed -i "/^$TEST_USER:/d" "$file" 2>/dev/null || true
    if [ "$file" = /etc/subuid ]; then
      usermod --add-subuids "$SUBIDS" "$TEST_USER"
    else
      usermod --add-subgids "$SUBIDS" "$TEST_USER"
    fi
  fi
done

# An engine run as root gives each sandbox a slice of root's own subordinate range (as
# rootful podman --userns=auto does with its "containers" range): 959 sandboxes of 1025 ids.
for file in /etc/subuid /etc/subgid; do
  if ! grep -q "^root:" "$file" 2>/dev/null; then
    if [ "$file" = /etc/subuid ]; then
      usermod --add-subuids 2000000000-2001048575 root
    else
      usermod --add-subgids 2000000000-2001048575 root
    fi
  fi
done

# Disk slots (hutch/engine/storage/diskslots.py): each sandbox writes on a file system of its own of
# HUTCH_DISK_SLOT_GIB (default 16), so that it cannot fill the host's disk; a rootless engine
# cannot bound a directory itself.  Sparse files, loop-mounted with discard: a slot takes
# host disk only for what its sandbox holds now.  HUTCH_DISK_SLOTS (default 128) sandboxes
# at once; 0 makes none.  Like cgroup v1 delegation, mounts are gone after a reboot: run
# this again at boot.
# Volume slots, the same for volumes: each volume lives on one of HUTCH_VOLUME_SLOTS (32)
# of HUTCH_VOLUME_SLOT_GIB (64) GiB, under $slot_base/volumes/<n>.
slot_base="/var/lib/hutch-disks/$TEST_USER"
owner="$(id -u "$TEST_USER"):$(id -g "$TEST_USER")"
make_slots() {  # count size_gib dir
  local count="$1" gib="$2" dir="$3" made=0 i mnt img
  [ "$count" -gt 0 ] || return 0
  install -d -m 0755 /var/lib/hutch-disks "$slot_base" "$dir" "$dir/images"
  chmod 0700 "$dir/images"
  for i in $(seq 0 $((count - 1))); do
    mnt="$dir/$i"
    img="$dir/images/$i.img"
    mountpoint -q "$mnt" 2>/dev/null && continue
    if [ ! -f "$img" ]; then
      truncate -s "${gib}G" "$img"
      mkfs.ext4 -q -F -m 0 -O ^has_journal -E "root_owner=$owner,lazy_itable_init=1" "$img"
    fi
    mkdir -p "$mnt"
    if ! mount -o loop,discard,nosuid,nodev "$img" "$mnt"; then
      echo "setup-host: cannot loop-mount disk slots here: sandboxes' disks stay unbounded" >&2
      rmdir "$mnt" 2>/dev/null || true
      return 0
    fi
    chmod 0700 "$mnt"  # a sandbox's files are no other host user's to read
    made=$((made + 1))
  done
  [ "$made" -eq 0 ] || echo "setup-host: mounted $made disk slots of $gib GiB under $dir"
}
make_slots "${HUTCH_DISK_SLOTS:-128}" "${HUTCH_DISK_SLOT_GIB:-16}" "$slot_base"
make_slots "${HUTCH_VOLUME_SLOTS:-32}" "${HUTCH_VOLUME_SLOT_GIB:-64}" "$slot_base/volumes"

# crun (1.8) refuses hybrid cgroup hosts whose v2 hierarchy holds a controller; here it is
# hugetlb. Mounting the v1 hugetlb hierarchy moves the controller there.
if [ "$(stat -fc %T /sys/fs/cgroup)" != cgroup2fs ] && [ -f /sys/fs/cgroup/unified/cgroup.controllers ] \
   && grep -qw hugetlb /sys/fs/cgroup/unified/cgroup.controllers; then
  echo "setup-host: mounting the hugetlb v1 cgroup controller (hybrid host)"
  mkdir -p /sys/fs/cgroup/hugetlb
  mountpoint -q /sys/fs/cgroup/hugetlb || mount -t cgroup -o hugetlb cgroup /sys/fs/cgroup/hugetlb \
    || echo "setup-host: could not mount hugetlb; hutch will fall back to runc" >&2
fi

if [ -c /dev/net/tun ] && [ "$(stat -c %a /dev/net/tun)" != 666 ]; then
  chmod 0666 /dev/net/tun
fi

# cgroup v1: the user owns its directory and the files that move processes, not the limits
# of the directory itself, so the subtree as a whole stays within what root set for it:
# all of the user's sandboxes together get at most HUTCH_SANDBOXES_MEMORY_PERCENT (75) of
# the host's memory and 3/4 of its pids, so that neither the host's OOM killer nor an
# exhausted pid space is what bounds them.
delegate_v1() {
  local user="$1" controller dir mem_kib pid_max
  for controller in memory cpu pids; do
    mountpoint -q "/sys/fs/cgroup/$controller" || continue
    dir="/sys/fs/cgroup/$controller/hutch/$user"
    mkdir -p "$dir"
    chown "$user:" "$dir" "$dir/cgroup.procs" "$dir/tasks"
  done
  dir=/sys/fs/cgroup/memory/hutch/$user
  if [ -d "$dir" ]; then
    mem_kib=$(awk '/^MemTotal:/ {print $2}' /proc/meminfo)
    echo $(( mem_kib * 1024 / 100 * ${HUTCH_SANDBOXES_MEMORY_PERCENT:-75} )) \
      > "$dir/memory.limit_in_bytes"
  fi
  dir=/sys/fs/cgroup/pids/hutch/$user
  if [ -d "$dir" ]; then
    pid_max=$(cat /proc/sys/kernel/pid_max)
    echo $(( pid_max * 3 / 4 )) > "$dir/pids.max"
  fi
}
if [ "$(stat -fc %T /sys/fs/cgroup)" != cgroup2fs ]; then
  echo "setup-host: delegating cgroup v1 memory, cpu and pids to $TEST_USER"
  delegate_v1 "$TEST_USER"
  for user in ${HUTCH_DELEGATE_USERS:-}; do delegate_v1 "$user"; done
fi

# Moving a process into a cgroup waits for an RCU grace period unless the cgroup file
# system favours dynamic changes (Linux >= 6.1): 5-15 ms for every sandbox start and exec
# on an otherwise idle machine.  The setting is global; any cgroup2 mount carries it.
for unified in /sys/fs/cgroup /sys/fs/cgroup/unified; do
  if [ "$(stat -fc %T "$unified" 2>/dev/null)" = cgroup2fs ]; then
    grep -q " $unified cgroup2 .*favordynmods" /proc/mounts \
      || mount -o remount,favordynmods "$unified" 2>/dev/null \
      || echo "setup-host: could not set favordynmods on $unified (Linux < 6.1?)" >&2
    break
  fi
done

echo "setup-host: ready (test user: $TEST_USER)"
