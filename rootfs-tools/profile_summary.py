#!/usr/bin/env python3
"""Groups `perf script -F comm,pid,ip,sym` samples (recorded with -a -g) into issue 12's
categories, as shares of all CPU: each sample goes to the first category whose kernel
functions appear in its call chain, else by the process it was taken in (the daemon,
a container process, the load generator, idle), else to "other". Reads stdin, prints a
Markdown table. Used by rootfs-tools/profile.sh.
"""
import argparse
import re
import sys
from collections import Counter

# (category, call-chain functions that put a sample in it), checked in this order.
BY_STACK = [
    ("network namespaces: copy_net_ns + cleanup_net",
     re.compile(r"^(copy_net_ns|cleanup_net|setup_net|ops_exit_list|ops_undo_list)$")),
    ("cgroup mkdir + rmdir (and their deferred release)",
     re.compile(r"^(cgroup_mkdir|cgroup_rmdir|css_killed_work_fn|css_release_work_fn|"
                r"css_free_rwork_fn|cgroup_destroy_locked)$")),
    ("seccomp attach",
     re.compile(r"^(do_seccomp|seccomp_set_mode_filter|seccomp_attach_filter|"
                r"seccomp_cache_prepare)$")),
    ("mount (mount, umount, pivot_root, mount namespace teardown)",
     re.compile(r"^(path_mount|do_mount|__x64_sys_mount|__x64_sys_umount|"
                r"__x64_sys_pivot_root|__x64_sys_open_tree|__x64_sys_move_mount|"
                r"__x64_sys_fsmount|__x64_sys_fsconfig|__x64_sys_mount_setattr|"
                r"put_mnt_ns|cleanup_mnt|umount_tree|copy_mnt_ns)$")),
    ("per-request files: bundle mkdir, control socket bind, rmdir, unlink",
     re.compile(r"^(do_mkdirat|do_rmdir|do_unlinkat|unix_bind)$")),
]
HANDLERS = {"test-handler", "python3", "python3.11", "python"}
IDLE = re.compile(r"^(swapper|cpuidle|idle)")


def samples(lines):
    """Yields (comm, pid, [symbols leaf first]) per sample."""
    head, stack = None, []
    for line in lines:
        if not line.strip():
            if head:
                yield head[0], head[1], stack
            head, stack = None, []
        elif line.startswith("\t"):
            # "\tffffffff81234567 symbol": keep the symbol (without an offset, if any).
            parts = line.split()
            if len(parts) >= 2:
                stack.append(parts[1].split("+")[0])
        else:
            # "comm  pid " (comm may contain spaces; the pid is the last number).
            m = re.match(r"^(.*?)\s+(\d+)$", line.strip())
            if m:
                head = (m.group(1).strip(), int(m.group(2)))
    if head:
        yield head[0], head[1], stack


def category(comm, pid, stack, daemon, daemon_comms):
    for name, pattern in BY_STACK:
        if any(pattern.match(s) for s in stack):
            return name
    if pid == 0 or IDLE.match(comm):
        return "idle"
    if pid == daemon:
        return "the daemon (faasd's threads, other work)"
    if comm in HANDLERS or (comm in daemon_comms and pid > daemon):
        # A container's process: before exec it carries the name of the daemon thread
        # that cloned it (tokio-rt-worker, as threads of older processes may be named:
        # those started before the daemon are not its containers).
        return "the container process (setup not above, exec, handler, exit)"
    if comm == "ab":
        return "the load generator (ab)"
    return "other (kworkers and softirq not above, the rest of the machine)"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--daemon-pid", type=int, required=True)
    ap.add_argument("--rate", default="?")
    ap.add_argument("--seconds", default="?")
    ap.add_argument("--clients", default="?")
    args = ap.parse_args()
    parsed = list(samples(sys.stdin))
    if not parsed:
        sys.exit("profile: perf recorded no samples")
    daemon_comms = {c for c, p, _ in parsed if p == args.daemon_pid}
    cats = [(category(c, p, s, args.daemon_pid, daemon_comms), c) for c, p, s in parsed]
    counts = Counter(cat for cat, _ in cats)
    other = Counter(comm for cat, comm in cats if cat.startswith("other"))
    total = sum(counts.values())
    print(f"\nperf record -a -g, {args.seconds} s, {args.clients} clients at saturation "
          f"({args.rate} containers/s by ab), {total} samples:\n")
    # The second share leaves out idle time and the rest of the machine: what the
    # requests themselves cost, comparable between a quiet and a busy machine.
    own = sum(n for name, n in counts.items() if name != "idle" and not name.startswith("other"))
    print("| share of all CPU | share of the requests' own | what |\n|---|---|---|")
    order = [n for n, _ in BY_STACK]
    for name, n in sorted(counts.items(), key=lambda kv: (kv[0] not in order, -kv[1])):
        mine = "" if name == "idle" or name.startswith("other") else f"{100 * n / max(own, 1):.1f} %"
        print(f"| {100 * n / total:.1f} % | {mine} | {name} |")
    if other:
        top = ", ".join(f"{comm} {100 * n / total:.1f} %" for comm, n in other.most_common(6))
        print(f"\nother, by process name: {top}")
    busy = total - counts.get("idle", 0)
    print(f"\nbusy {100 * busy / total:.1f} % of all CPU; categories are exclusive, "
          "first match in the order above.")


if __name__ == "__main__":
    main()
