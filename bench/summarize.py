#!/usr/bin/env python3
"""Markdown tables from bench/run.sh JSON lines (stdin or files): the median
of each figure over the rounds, Signet beside SPIRE."""
import fileinput, json, statistics

rows = {}
for line in fileinput.input():
    line = line.strip()
    if not line.startswith("{"):
        continue
    d = json.loads(line)
    rows.setdefault((d["impl"], d["E"]), {}).setdefault(d["phase"], []).append(d["result"])

def med(xs):
    return statistics.median(xs) if xs else float("nan")

def fig(r, phase, key):
    return med([x[key] for x in r.get(phase, [])])

print("| E | impl | FetchX509SVID p50 / p99 ms (1 worker) | calls/s (1 / 8 workers) | p99 ms (8 workers) | new client's first SVID ms | all E SVIDs, registration included, ms | new entry to watching workload ms | agent RSS MiB |")
print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
for E in sorted({e for _, e in rows}):
    for impl in ("signet", "spire"):
        r = rows.get((impl, E))
        if not r:
            continue
        print("| %d | %s | %.2f / %.2f | %.0f / %.0f | %.1f | %.0f | %.0f | %.0f | %.0f |" % (
            E, impl, fig(r, "latency_c1", "p50_ms"), fig(r, "latency_c1", "p99_ms"),
            fig(r, "latency_c1", "per_s"), fig(r, "latency_c8", "per_s"), fig(r, "latency_c8", "p99_ms"),
            fig(r, "first", "ms"), fig(r, "all", "all_ms"), fig(r, "new_entry", "ms"),
            fig(r, "memory", "agent_rss_kb") / 1024))
