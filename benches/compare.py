"""The one command behind BENCHMARKS.md:

    python3 benches/compare.py          # 5 runs of side_by_side + CPython, ~25 seconds
    python3 benches/compare.py --quick  # 1 short run

Runs `cargo bench --bench side_by_side` (the crate and the bare lists,
interleaved sample by sample in one process) three times, then Python's
`contextlib.AsyncExitStack` right after, and prints the tables of
BENCHMARKS.md: for each goal, the median over the runs of each run's paired
median ratio, with the range of those run medians and the widest
interquartile spread seen within a run.
"""

import json
import os
import platform
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def machine():
    cpu = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    rustc = subprocess.run(["rustc", "--version"], capture_output=True, text=True).stdout.strip()
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    return f"commit {head}; {cpu}, {os.cpu_count()} cores, {platform.system()} {platform.release()}; {rustc}; Python {platform.python_version()}"


def run_side_by_side(quick):
    args = ["cargo", "bench", "-q", "--bench", "side_by_side", "--"] + (["--quick"] if quick else [])
    out = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, check=True).stdout
    line = next(l for l in out.splitlines() if l.startswith("JSON "))
    return json.loads(line[5:])


GOALS = {
    ("async callbacks", 1): 1.25, ("async callbacks", None): 1.0,
    ("entered resources", 1): 1.25, ("entered resources", None): 1.15,
    ("sync callbacks", 1): None, ("sync callbacks", None): 1.25,
    ("scope with async callbacks", 1): 1.25, ("scope with async callbacks", None): 1.25,
}


def goal(op, n):
    return GOALS.get((op, n), GOALS.get((op, None)))


def median(xs):
    xs = sorted(xs)
    return xs[len(xs) // 2]


def main():
    quick = "--quick" in sys.argv
    runs = [run_side_by_side(quick) for _ in range(1 if quick else 5)]
    py = json.loads(
        subprocess.run(
            [sys.executable, os.path.join(ROOT, "benches", "python_baseline.py")],
            capture_output=True, text=True, check=True,
        ).stdout
    )
    print(f"Measured: {machine()}; {len(runs)} run(s) of side_by_side.\n")
    print("| operation | entries | crate ns/entry | bare, fresh vec | bare, reused vec | crate / fresh: median of run medians (their range; widest in-run p25-p75) | goal | verdict | crate / reused |")
    print("|---|---:|---:|---:|---:|---:|---:|---|---:|")
    keys = [(r["op"], r["n"]) for r in runs[0]["rows"]]
    crate100, fresh100 = {}, {}
    for op, n in keys:
        rows = [next(r for r in run["rows"] if r["op"] == op and r["n"] == n) for run in runs]
        ratio = median([r["ratio"] for r in rows])
        lo, hi = min(r["ratio"] for r in rows), max(r["ratio"] for r in rows)
        p25, p75 = min(r["p25"] for r in rows), max(r["p75"] for r in rows)
        g = goal(op, n)
        verdict = "no goal" if g is None else ("met" if ratio <= g else "**missed**")
        crate = median([r["crate"] for r in rows])
        if n == 100:
            crate100[op] = crate
            fresh100[op] = median([r["fresh"] for r in rows])
        print(
            f"| {op} | {n:,} | {crate:.1f} | {median([r['fresh'] for r in rows]):.1f} | {median([r['reuse'] for r in rows]):.1f} "
            f"| {ratio:.2f}x ({lo:.2f}-{hi:.2f}; {p25:.2f}-{p75:.2f}) | {'-' if g is None else f'≤ {g:.2f}x'} | {verdict} "
            f"| {median([r['ratio_reuse'] for r in rows]):.2f}x |"
        )
    print("\nCPython's `contextlib.AsyncExitStack`, measured right after in the same session (best of 5 batches; "
          "a quiet machine favours neither side more than the other):\n")
    print("| 100 entries | this crate ns/entry | CPython ns/entry | CPython / crate | goal | verdict | CPython / bare fresh vec |")
    print("|---|---:|---:|---:|---:|---|---:|")
    for op, pykey in (("async callbacks", "callbacks"), ("entered resources", "resources")):
        p = py[pykey]["100"]
        c = crate100[op]
        print(f"| {op} | {c:.1f} | {p:.0f} | {p / c:.1f}x | ≥ 25x | {'met' if p / c >= 25 else '**missed**'} "
              f"| {p / fresh100[op]:.1f}x |")


if __name__ == "__main__":
    main()
