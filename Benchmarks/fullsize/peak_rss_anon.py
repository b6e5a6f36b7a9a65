#!/usr/bin/env python3
"""Run a command and report its peak anonymous memory (RssAnon: heap, stacks, anonymous maps —
not the pages of memory-mapped weight files) and its wall time.

Usage: peak_rss_anon.py [--label NAME] -- COMMAND [ARGS...]

/proc/PID/status is sampled every 50 ms; the peak of RssAnon is printed on stderr as
`peak RssAnon: N MB (label), wall S s, exit C`, and the command's exit code is returned.
"""
import subprocess
import sys
import time


def rss_anon_kb(pid):
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("RssAnon:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def main(argv):
    label = ""
    if argv[:1] == ["--label"]:
        label, argv = argv[1], argv[2:]
    if argv[:1] == ["--"]:
        argv = argv[1:]
    if not argv:
        sys.exit(__doc__)
    start = time.monotonic()
    process = subprocess.Popen(argv)
    peak = 0
    while process.poll() is None:
        value = rss_anon_kb(process.pid)
        if value is not None:
            peak = max(peak, value)
        time.sleep(0.05)
    wall = time.monotonic() - start
    print(f"peak RssAnon: {peak / 1024:.0f} MB ({label or argv[0]}), wall {wall:.1f} s, exit {process.returncode}",
          file=sys.stderr, flush=True)
    return process.returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
