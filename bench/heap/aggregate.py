#!/usr/bin/env python3
"""Groups the live heap of a heaptrack flame graph (heaptrack_print --print-flamegraph F
--flamegraph-cost-type leaked) by what holds it. Frames are matched by function and file names
(inlined frames carry both); the first matching rule, in this order, wins. Prints the groups, then
the largest allocation sites left in "other". Demangles through rustfilt when it is on PATH."""
import collections
import re
import shutil
import subprocess
import sys

RULES = [
    ("connections and I/O buffers (hyper, rustls, bytes)", ["(bytes_mut.rs)", "(conn.rs)", "(buffers.rs)", "rustls"]),
    ("controllers' caches of their own objects (kube reflector Store)", ["apply_watcher_event"]),
    ("controllers' timers (kube scheduler: requeues)", ["schedule_message", "delay_queue"]),
    ("controllers' clock (src/controller/deadlines.rs: validity boundaries, expiries)", ["(deadlines.rs)"]),
    ("decision point state (src/core/pdp/snapshot.rs, src/pdp/watch.rs)",
     ["(snapshot.rs)", "upsert_agent", "upsert_grant", "upsert_task", "(watch.rs)"]),
    ("agent directories of admission and scan (src/webhook/agents.rs)", ["(agents.rs)", "(rules.rs)"]),
    ("grant/task indexes and change filters (src/controller/mod.rs)",
     ["observe<", "(fns.rs)", "{closure#0} (toolgrant.rs)", "{closure#0} (task.rs)"]),
    ("controller streams (filters, queues of kube Controller)", ["(toolgrant.rs)", "(task.rs)", "(identity.rs)"]),
]


def main(path):
    text = open(path, encoding="utf-8", errors="replace").read()
    if shutil.which("rustfilt"):
        text = subprocess.run(["rustfilt"], input=text, capture_output=True, text=True, check=True).stdout
    groups, other, total = collections.Counter(), collections.Counter(), 0
    for line in text.splitlines():
        stack, _, cost = line.rpartition(" ")
        if not cost.isdigit():
            continue
        cost = int(cost)
        total += cost
        frames = stack.split(";")
        for name, markers in RULES:
            if any(m in f for f in frames for m in markers):
                groups[name] += cost
                break
        else:
            site = [f for f in reversed(frames) if not re.search(r"\((alloc|raw_vec|boxed|vec|string|mod|map)\.rs\)$", f)]
            other[" <- ".join(site[:2])[:150]] += cost
            groups["other"] += cost
    print(f"live heap: {total / 2**20:.1f} MiB\n")
    print("| held by | MiB | share |\n|---|---|---|")
    for name, cost in groups.most_common():
        print(f"| {name} | {cost / 2**20:.1f} | {100 * cost / max(total, 1):.0f} % |")
    print("\nlargest sites in \"other\":")
    for site, cost in other.most_common(12):
        print(f"  {cost / 2**20:6.2f} MiB  {site}")


if __name__ == "__main__":
    main(sys.argv[1])
