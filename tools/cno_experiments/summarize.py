#!/usr/bin/env python3
"""Prints the table of docs/cno-equivariance.md from the runs of run.sh (and the official-code
runs of train_official_cno.py, OUT/official*.s<seed>.json), in plain Python.

    python3 tools/cno_experiments/summarize.py OUT

Per variant: median [min, max] over the seeds that finished, in %, of the validation error
(median relative L2 over samples, v and w averaged), the translated-test error of v
(median), E(delay) and E(space) of v (mean over the 8 equivariance samples, as the study's table) at the study's
fixed shifts, and the largest |v| answered to a zero current (the rest state is 0).
"""
import glob
import json
import os
import re
import statistics
import sys


def figures(run):
    with open(os.path.join(run, "results.json")) as f:
        res = json.load(f)
    m = res["models"][0]
    shifts = res["fixed_shifts"]
    point = lambda curve, k: next(p for p in curve["points"] if p["steps"] == k)
    out = {
        "validation": sum(s["rel_l2"]["median"] for s in m["validation"]) / len(m["validation"]),
        "test_v": m["test"][0]["rel_l2"]["median"],
        "e_delay_v": point(m["time_curve"], shifts["time_steps"])["channels"][0]["mean"],
        "e_space_v": point(m["space_curve"], shifts["space_steps"])["channels"][0]["mean"],
    }
    zero = os.path.join(run, "zero_out.npy")
    if os.path.exists(zero):
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        from zero_input import read_f32
        shape, values = read_f32(zero)
        plane = shape[2] * shape[3]
        out["zero_input_max_abs_v"] = max(map(abs, values[:plane]))
    return out


def cell(values, percent=True):
    if not values:
        return "–"
    scale = 100.0 if percent else 1.0
    med = statistics.median(values) * scale
    if len(values) == 1:
        return f"{med:.1f}" if percent else f"{med:.3f}"
    lo, hi = min(values) * scale, max(values) * scale
    return f"{med:.1f} [{lo:.1f}, {hi:.1f}]" if percent else f"{med:.3f} [{lo:.3f}, {hi:.3f}]"


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    out = sys.argv[1]
    rows = {}
    for run in sorted(glob.glob(os.path.join(out, "runs", "*.s*"))):
        if not os.path.exists(os.path.join(run, "results.json")):
            continue
        variant, seed = re.match(r"(.*)\.s(\d+)$", os.path.basename(run)).groups()
        rows.setdefault(variant, {})[int(seed)] = figures(run)
    for path in sorted(glob.glob(os.path.join(out, "official*.s*.json"))):
        name, seed = re.match(r"(official[^.]*)\.s(\d+)\.json$", os.path.basename(path)).groups()
        with open(path) as f:
            rows.setdefault(name + "_code", {})[int(seed)] = json.load(f)
    keys = ["validation", "test_v", "e_delay_v", "e_space_v"]
    print("| variant | seeds | validation % | test v % | E(delay) v % | E(space) v % | zero input max abs v |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for variant, by_seed in rows.items():
        cols = [cell([r[k] for r in by_seed.values()]) for k in keys]
        zero = cell([r["zero_input_max_abs_v"] for r in by_seed.values() if "zero_input_max_abs_v" in r], False)
        seeds = ",".join(str(s) for s in sorted(by_seed))
        print(f"| {variant} | {seeds} | " + " | ".join(cols) + f" | {zero} |")


if __name__ == "__main__":
    main()
