"""How true the run's ETA is: run a command (default: the offline demo) with its output redirected, then
compare every ETA it printed with the time that was actually left.

    python benchmarks/eta_accuracy.py                                  # the demo, a fresh run folder
    python benchmarks/eta_accuracy.py -- python -m ablate_lit test --config configs/demo-task.yaml --root /tmp/x

Prints the first ETA against the time left then (the issue's test: within 25%), the largest error over
the run, and whether any ETA said less than a minute while more than five were left. Each progress
line of a redirected run starts with the time of day (``common.progress``); the time left after a line
is the command's end minus the moment the line was read.
"""

from __future__ import annotations

import re
import subprocess
import sys
import tempfile
import time

ETA = re.compile(r"\(eta (?:(\d+):)?(\d+):(\d\d)\)")


def seconds(match: re.Match) -> int:
    h, m, s = (int(g) if g else 0 for g in match.groups())
    return 3600 * h + 60 * m + s


def main(argv: list[str]) -> None:
    command = argv[argv.index("--") + 1 :] if "--" in argv else None
    if command is None:
        root = tempfile.mkdtemp(prefix="eta-")
        command = [sys.executable, "-m", "ablate_lit", "test", "--config", "configs/demo.yaml", "--root", root]
    started = time.perf_counter()
    seen: list[tuple[float, int, str]] = []  # (seconds since start, ETA, line)
    log = tempfile.NamedTemporaryFile("w", prefix="eta-", suffix=".log", delete=False)
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1) as proc:
        for line in proc.stdout:
            log.write(line)
            found = ETA.search(line)
            if found:
                seen.append((time.perf_counter() - started, seconds(found), line.strip()))
    total = time.perf_counter() - started
    if proc.returncode or not seen:
        raise SystemExit(f"the command ended with {proc.returncode} after {total:.0f} s, {len(seen)} ETA lines")
    at, eta, line = seen[0]
    left = total - at
    print(f"run: {total:.0f} s; {len(seen)} lines with an ETA")
    print(f"first ETA: {eta} s at {at:.0f} s, when {left:.0f} s were left: {100 * (eta - left) / left:+.0f}%")
    print(f"  ({line})")
    log.close()
    print(f"the command's output: {log.name}")
    early = [s for s in seen if total - s[0] >= 30] or seen  # (near the end a second is a large share)
    worst = max(early, key=lambda s: abs(s[1] - (total - s[0])) / max(total - s[0], 1))
    print(f"largest error with 30 s or more left: {worst[1]} s said with {total - worst[0]:.0f} s left")
    print(f"  ({worst[2][:120]})")
    short = [s for s in seen if s[1] < 60 and total - s[0] > 300]
    print(f"ETA under a minute with more than five left: {len(short)} times")


if __name__ == "__main__":
    main(sys.argv[1:])
