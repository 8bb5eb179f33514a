"""Facts about the machine that defaults depend on."""

from __future__ import annotations

import os
from pathlib import Path


def physical_cores() -> int:
    """Physical cores this process may run on (hyper-threads share a core's arithmetic units, so
    matrix products gain nothing from them). Falls back to the logical count where topology is unknown."""
    try:
        cpus = sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1
    cores = set()
    for cpu in cpus:
        siblings = Path(f"/sys/devices/system/cpu/cpu{cpu}/topology/thread_siblings_list")
        try:
            cores.add(siblings.read_text().strip())
        except OSError:
            return len(cpus) or 1
    return max(1, len(cores))


def physical_memory() -> int | None:
    """Bytes of physical memory (RAM) of this machine, None where the system does not say. Not the memory
    available now: the page cache (the model file itself, mapped) counts as used there, yet gives way."""
    try:
        pages, page_size = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):  # no sysconf (Windows), or no such name
        return None
    return pages * page_size if pages > 0 and page_size > 0 else None


def memory_limit() -> int | None:
    """The most memory this process may use: physical memory, or less where a cgroup (a container, a systemd
    slice) caps it; None where neither says."""
    limits = [m for m in (physical_memory(), _cgroup_limit()) if m]
    return min(limits) if limits else None


def _cgroup_limit() -> int | None:
    """The memory limit of this process's cgroup (v2 memory.max, v1 memory.limit_in_bytes), None if unlimited or
    unknown."""
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:  # not Linux
        return None
    candidates = []
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if controllers == "":  # v2: the unified hierarchy
            candidates += [Path("/sys/fs/cgroup") / path.lstrip("/") / "memory.max", Path("/sys/fs/cgroup/memory.max")]
        elif "memory" in controllers.split(","):  # v1
            candidates.append(Path("/sys/fs/cgroup/memory") / path.lstrip("/") / "memory.limit_in_bytes")
    for f in candidates:
        try:
            text = f.read_text().strip()
        except OSError:
            continue
        if text.isdigit() and int(text) < 1 << 60:  # "max" or v1's huge number: no limit
            return int(text)
    return None
