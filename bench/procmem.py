"""Memory of a server and every process under it, from /proc (Linux): RSS counts each shared page in
every process that maps it, PSS divides it among them, so the PSS of a tree adds up and its RSS does not.

  procmem.py PID          {"rss_mib", "pss_mib", "processes", "largest_pss_mib"} of PID and the
                          processes under it (the last: the PSS of the largest one)
  procmem.py --pids PID   the ids of PID and the processes under it, one line"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import orjson


def descendants(pid: int) -> list[int]:
    """pid and all the processes under it (those alive when /proc was read)."""
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(entry.path, "stat").read_text()
        except OSError:
            continue
        parent = int(stat[stat.rindex(")") + 2 :].split()[1])  # the name may hold spaces and parentheses
        children.setdefault(parent, []).append(int(entry.name))
    tree, pending = [], [pid]
    while pending:
        current = pending.pop()
        tree.append(current)
        pending += children.get(current, [])
    return tree


def rollup_kib(pid: int) -> dict[str, int]:
    fields = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
        name, value = line.split(":", 1)
        fields[name] = int(value.split()[0])
    return fields


def tree_memory(pid: int) -> dict[str, float]:
    rss = pss = largest = 0
    processes = 0
    for member in descendants(pid):
        try:
            fields = rollup_kib(member)
        except (OSError, ValueError):
            continue  # exited meanwhile, or a kernel thread
        rss += fields.get("Rss", 0)
        pss += fields.get("Pss", 0)
        largest = max(largest, fields.get("Pss", 0))
        processes += 1
    if not processes:
        raise ProcessLookupError(pid)
    return {
        "rss_mib": round(rss / 1024, 1),
        "pss_mib": round(pss / 1024, 1),
        "processes": processes,
        "largest_pss_mib": round(largest / 1024, 1),
    }


if __name__ == "__main__":
    if sys.argv[1] == "--pids":
        print(*descendants(int(sys.argv[2])))
    else:
        sys.stdout.write(orjson.dumps(tree_memory(int(sys.argv[1]))).decode() + "\n")
