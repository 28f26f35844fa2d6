"""What confines a sandbox's processes: its id slice, seccomp filter and cgroups."""
