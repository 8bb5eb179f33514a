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
