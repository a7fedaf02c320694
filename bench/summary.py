#!/usr/bin/env python3
"""Medians [min-max] per label of the runs bench/run.sh recorded. usage: summary.py parley.jsonl"""
import json, statistics, sys

FIELDS = {
    "fanout": [("deliveries_per_s", "deliveries/s"), ("lat_us.p50", "p50 µs"), ("lat_us.p99", "p99 µs"),
               ("lost", "lost"), ("cpu.server_pct", "server %"), ("cpu.bench_pct", "bench %")],
    "idle": [("server_kib_per_conn", "KiB/conn"), ("server_kib_per_conn_held", "KiB/conn held"),
             ("setup_s", "setup s"), ("alive_at_end", "alive")],
    "join-storm": [("all_in_s", "all in s"), ("all_views_right_s", "views right s"), ("views_right", "right")],
    "transfer": [("upload.MBps", "upload MB/s"), ("upload.cpu.server_pct", "server % up"),
                 ("download.MBps", "download MB/s"), ("download.cpu.server_pct", "server % down")],
    "chat-during-transfer": [("download_MBps", "download MB/s"), ("to_downloader_us.p99", "to p99 µs"),
                             ("from_downloader_us.p99", "from p99 µs"), ("downloader_confirm_us.p99", "confirm p99 µs")],
}

def get(d, path):
    for k in path.split("."):
        d = d.get(k) if isinstance(d, dict) else None
    return d

runs = {}
for line in open(sys.argv[1]):
    d = json.loads(line)
    runs.setdefault(d["label"], []).append(d)
for label, rs in runs.items():
    parts = []
    for path, name in FIELDS[rs[0]["mode"]]:
        xs = [x for x in (get(r, path) for r in rs) if x is not None]
        if xs:
            parts.append(f"{name} {statistics.median(xs):,.1f} [{min(xs):,.1f}-{max(xs):,.1f}]")
    print(f"{label:28} n={len(rs)}  " + "; ".join(parts))
