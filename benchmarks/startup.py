"""CPU time of ibdc's start: `ibdc --help`, `ibdc COMMAND --help` and `ibdc --version` (user + system
seconds of the child process, the median of --repeat runs), and whether the start imported torch.

    python benchmarks/startup.py --repeat 5

The target of "fast start" is `ibdc --help` under 0.5 s of CPU on a 2-core machine; CPU time rather than
wall time because the machine is shared and noisy.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys

COMMANDS = (["--help"], ["condense", "--help"], ["bind", "--help"], ["evaluate", "--help"], ["--version"])


def cpu_seconds(argv: list[str]) -> float:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def imports_torch() -> bool:
    """Whether `ibdc --help` imports torch (the console script's module graph, read by -X importtime)."""
    code = "import sys; sys.argv=['ibdc', '--help']; from ibdc_cli.cli import main; main()"
    run = subprocess.run([sys.executable, "-X", "importtime", "-c", code], capture_output=True, text=True)
    return any(line.split("|")[-1].strip() == "torch" for line in run.stderr.splitlines())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    ibdc = shutil.which("ibdc") or os.path.join(os.path.dirname(sys.executable), "ibdc")
    results = {}
    for command in COMMANDS:
        times = [cpu_seconds([ibdc, *command]) for _ in range(args.repeat)]
        results["ibdc " + " ".join(command)] = round(statistics.median(times), 3)
    results["ibdc --help imports torch"] = imports_torch()
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
