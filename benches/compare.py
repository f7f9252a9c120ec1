"""Runs the Rust benches and Python's AsyncExitStack in one go and prints
them side by side, with every ratio of the performance budget marked met or
missed. This is the one command behind BENCHMARKS.md:

    python3 benches/compare.py            # cargo bench + Python, ~4 minutes
    python3 benches/compare.py --no-cargo # reuse target/criterion results

Figures are criterion's medians (Rust) and best-of-5 batches (Python), in
nanoseconds per entry for register + unwind.
"""

import json
import os
import platform
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CRITERION = os.path.join(ROOT, "target", "criterion")
SIZES = (1, 10, 100, 1000)


def median_ns(*path):
    with open(os.path.join(CRITERION, *path, "new", "estimates.json")) as f:
        return json.load(f)["median"]["point_estimate"]


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
    return f"{cpu}, {os.cpu_count()} cores, {platform.system()} {platform.release()}; {rustc}; Python {platform.python_version()}"


def main():
    if "--no-cargo" not in sys.argv:
        subprocess.run(["cargo", "bench", "--bench", "stack"], cwd=ROOT, check=True)
    py = json.loads(
        subprocess.run(
            [sys.executable, os.path.join(ROOT, "benches", "python_baseline.py")],
            capture_output=True, text=True, check=True,
        ).stdout
    )

    print(f"Machine: {machine()}\n")
    print("Register + unwind, ns per entry (lower is better)\n")
    print("| kind | entries | this crate | erased baseline | hand-written | Python | crate / erased | Python / crate |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    verdicts = []
    for kind in ("callbacks", "resources"):
        for n in SIZES:
            group = f"register_unwind_{kind}"
            stack = median_ns(group, "stack", str(n)) / n
            erased = median_ns(group, "erased", str(n)) / n
            hand = median_ns(group, "hand_written", str(n)) / n
            python = py[kind][str(n)]
            print(f"| {kind} | {n} | {stack:.1f} | {erased:.1f} | {hand:.1f} | {python:.0f} | {stack / erased:.2f}x | {python / stack:.1f}x |")
            if n == 100:
                verdicts.append((f"{kind}: at most 1.25x the erased baseline at 100 entries", stack / erased <= 1.25, f"{stack / erased:.2f}x"))
                verdicts.append((f"{kind}: at least 25x below Python at 100 entries", python / stack >= 25, f"{python / stack:.1f}x"))

    print("\nBackground path: a stack dropped with n entries, until its cleanup finished\n")
    print("| entries | dropped stack | hand-written tokio::spawn | ratio |")
    print("|---:|---:|---:|---:|")
    for n in (1, 100):
        s, h = median_ns("background", "stack", str(n)), median_ns("background", "spawn", str(n))
        print(f"| {n} | {s / 1000:.2f} µs | {h / 1000:.2f} µs | {s / h:.2f}x |")

    g, q = median_ns("group_vs_sequential", "group"), median_ns("group_vs_sequential", "sequential")
    print("\n1,000 exits that each await a 1 ms timer\n")
    print("| concurrent group | sequential unwind | speed-up |")
    print("|---:|---:|---:|")
    print(f"| {g / 1e6:.2f} ms | {q / 1e6:.0f} ms | {q / g:.0f}x |")

    a, b = median_ns("tracing", "no_subscriber") / 100, median_ns("tracing", "filtered_out") / 100
    print("\nTracing instrumentation, 100 callbacks, ns per entry\n")
    print("| no subscriber | subscriber filtering the crate out | ratio |")
    print("|---:|---:|---:|")
    print(f"| {a:.1f} | {b:.1f} | {b / a:.2f}x |")

    print("\nBudget\n")
    for text, ok, figure in verdicts:
        print(f"- {text}: {figure}, {'met' if ok else 'MISSED'}")


if __name__ == "__main__":
    main()
