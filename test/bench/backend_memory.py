#!/usr/bin/env python3
"""Memory of PostgreSQL backends, from /proc/PID/smaps_rollup and /proc/PID/smaps.

    backend_memory.py [--model model.safetensors] [--json FILE] LABEL:PID ...

For each process: Rss, Pss, private (Private_Clean + Private_Dirty) and shared
(Shared_Clean + Shared_Dirty) from smaps_rollup; the model file's own mapping
(Size, Rss, Pss, private, Private_Dirty, MAP_SHARED or not) from smaps; and
where the private bytes are (heap, anonymous mappings, shared memory, the
model, libraries, other files).  Prints a table in MiB and writes the figures
as JSON.  Processes that ended before they were read are skipped with a note.
Used by test/bench/load_predict.sh; must run as the server's account or root.
"""
import argparse
import json
import os
import sys

KIB_FIELDS = ("Size", "Rss", "Pss", "Shared_Clean", "Shared_Dirty",
              "Private_Clean", "Private_Dirty", "Anonymous")


def read_rollup(pid):
    out = {}
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 3 and parts[-1] == "kB":
                out[parts[0].rstrip(":")] = int(parts[1])
    return out


def read_smaps(pid):
    """List of (name, vmflags, {field: kB}) per mapping."""
    maps = []
    cur = None
    with open(f"/proc/{pid}/smaps") as f:
        for line in f:
            parts = line.split()
            if not parts:
                continue
            if "-" in parts[0] and not parts[0].endswith(":"):
                name = " ".join(parts[5:]) if len(parts) > 5 else ""
                cur = [name, "", {}]
                maps.append(cur)
            elif parts[0] == "VmFlags:":
                cur[1] = " ".join(parts[1:])
            elif len(parts) == 3 and parts[2] == "kB" and parts[0].rstrip(":") in KIB_FIELDS:
                cur[2][parts[0].rstrip(":")] = int(parts[1])
    return maps


def category(name, model):
    if name.endswith(model):
        return "model"
    if name == "[heap]":
        return "heap"
    if name == "":
        return "anon"
    if name == "[stack]":
        return "stack"
    # PostgreSQL's main shared memory is an anonymous MAP_SHARED mapping
    # (shown as /dev/zero); dynamic shared memory lives in /dev/shm.
    if name.startswith("/dev/zero") or name.startswith("/SYSV") or name.startswith("/dev/shm/"):
        return "shm"
    if ".so" in os.path.basename(name) or name.endswith("/postgres") or name.startswith("[v"):
        return "code"
    return "other"


CATS = ("heap", "anon", "stack", "shm", "model", "code", "other")


def measure(pid, model):
    roll = read_rollup(pid)
    maps = read_smaps(pid)
    priv = {c: 0 for c in CATS}
    m = {"size": 0, "rss": 0, "pss": 0, "private": 0, "private_dirty": 0, "shared_flag": True,
         "mappings": 0}
    for name, flags, f in maps:
        p = f.get("Private_Clean", 0) + f.get("Private_Dirty", 0)
        cat = category(name, model)
        priv[cat] += p
        if cat == "model":
            m["mappings"] += 1
            m["size"] += f.get("Size", 0)
            m["rss"] += f.get("Rss", 0)
            m["pss"] += f.get("Pss", 0)
            m["private"] += p
            m["private_dirty"] += f.get("Private_Dirty", 0)
            # MAP_SHARED of a file opened read-only: the kernel drops VM_SHARED
            # ("sh") but keeps VM_MAYSHARE ("ms"); MAP_PRIVATE has neither.
            m["shared_flag"] = m["shared_flag"] and ("ms" in flags.split())
    return {
        "pid": pid,
        "rss": roll.get("Rss", 0),
        "pss": roll.get("Pss", 0),
        "private": roll.get("Private_Clean", 0) + roll.get("Private_Dirty", 0),
        "shared": roll.get("Shared_Clean", 0) + roll.get("Shared_Dirty", 0),
        "private_by_kind": priv,
        "model": m,
    }


def mib(kib):
    return kib / 1024.0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="model.safetensors")
    ap.add_argument("--json")
    ap.add_argument("--summary", metavar="LABEL",
                    help="print a summary line over the processes with this label")
    ap.add_argument("procs", nargs="+", help="LABEL:PID")
    args = ap.parse_args()

    rows = []
    for item in args.procs:
        label, pid = item.rsplit(":", 1)
        try:
            r = measure(int(pid), args.model)
        except (FileNotFoundError, ProcessLookupError) as e:
            print(f"  (pid {pid} gone before it was read: {e})", file=sys.stderr)
            continue
        r["label"] = label
        rows.append(r)

    hdr = ("process", "pid", "Rss", "Pss", "Private", "Shared", "model Rss", "model Pss",
           "model Priv", "priv: heap", "anon", "shm", "code", "other")
    print("memory per backend, MiB (Private = Private_Clean+Private_Dirty, "
          "Shared = Shared_Clean+Shared_Dirty; model = the model.safetensors mapping):")
    fmt = "%-10s %8s %7s %7s %7s %7s %9s %9s %10s %10s %6s %6s %6s %6s"
    print(fmt % hdr)
    for r in rows:
        pk = r["private_by_kind"]
        print("%-10s %8d %7.1f %7.1f %7.1f %7.1f %9.1f %9.2f %10.2f %10.1f %6.1f %6.1f %6.1f %6.1f" % (
            r["label"], r["pid"], mib(r["rss"]), mib(r["pss"]), mib(r["private"]), mib(r["shared"]),
            mib(r["model"]["rss"]), mib(r["model"]["pss"]), mib(r["model"]["private"]),
            mib(pk["heap"]), mib(pk["anon"]), mib(pk["shm"]), mib(pk["code"]),
            mib(pk["other"] + pk["stack"])))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    if args.summary:
        sel = [r for r in rows if r["label"] == args.summary]
        if not sel:
            print(f"memory: no {args.summary} backend was read")
            return 1
        n = len(sel)
        avg = lambda key: sum(r[key] for r in sel) / n
        mavg = lambda key: sum(r["model"][key] for r in sel) / n
        size = max(r["model"]["size"] for r in sel)
        shared = all(r["model"]["shared_flag"] and r["model"]["private_dirty"] == 0
                     and r["model"]["mappings"] > 0 for r in sel)
        print("memory: %d %s backends, average Rss %.1f MiB, Pss %.1f MiB, private %.1f MiB, "
              "shared %.1f MiB; model mapping %.1f MiB: Rss %.1f, Pss %.2f (size/%d = %.2f), "
              "private %.2f MiB (dirty %d kB): %s" % (
                  n, args.summary, mib(avg("rss")), mib(avg("pss")), mib(avg("private")),
                  mib(avg("shared")), mib(size), mib(mavg("rss")), mib(mavg("pss")), n,
                  mib(size) / n, mib(mavg("private")),
                  sum(r["model"]["private_dirty"] for r in sel),
                  "shared (MAP_SHARED, no private copy)" if shared else "NOT SHARED"))
        print("memory: average private MiB of a %s backend by mapping: %s" % (args.summary, ", ".join(
            "%s %.1f" % (c, mib(sum(r["private_by_kind"][c] for r in sel) / n)) for c in CATS)))
        return 0 if shared else 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
