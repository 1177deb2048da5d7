"""Instructions per SBS decision round (`core_speed`'s round), counted by valgrind's callgrind.

On a shared machine the round's time moves by half from one minute to the next, more than most changes
to it; the instructions it executes do not (the same build gives the same count to a few parts in a
thousand). This counts them: the round of `python -m sbs.bench.core_speed` (1,000 buffered requests,
16 × DP32 prefill and 4 × DP128 decode ranks, instance 0 due), each repetition on a fresh copy of the
prepared scheduler, with callgrind collecting only inside the round (`CALLGRIND_TOGGLE_COLLECT` from a
small C helper compiled at run time). The copies, the set-up and the first round (kernels loaded) are
not counted.

Run: `python -m sbs.bench.core_ir [--rounds N] [--json OUT]` (needs `valgrind`, a C compiler and
valgrind's headers; a minute or two, as everything runs under valgrind). Compare builds by running it
on each; the figure is the instructions of one round in millions (`--json`: `instructions_per_round`).
"""

from __future__ import annotations

import argparse
import copy
import ctypes
import gc
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence

_HELPER = """#include <valgrind/callgrind.h>
void sbs_on(void) { CALLGRIND_TOGGLE_COLLECT; }
void sbs_off(void) { CALLGRIND_TOGGLE_COLLECT; }
"""


def _child(lib_path: str, rounds: int) -> None:
    """Under valgrind: prepare the round, run it once uncounted, then `rounds` times counted."""
    from sbs.bench import core_speed
    from sbs.scheduler.core import compiled

    compiled.warm_up()
    lib = ctypes.CDLL(lib_path)
    prompts, outputs, _ = core_speed._lengths(core_speed.TRACE, core_speed.BUFFERED, 0)
    sched, due = core_speed.prepare_sbs(prompts, outputs)
    for i in range(rounds + 1):
        s = copy.deepcopy(sched)
        gc.disable()
        if i:
            lib.sbs_on()
        s.handle(None, due)
        if i:
            lib.sbs_off()
        gc.enable()


def total_instructions(callgrind_out: str) -> int:
    """The collected instruction count (`totals:` line) of a callgrind output file's text."""
    m = re.search(r"^totals:\s+(\d+)", callgrind_out, re.MULTILINE)
    if m is None:
        raise ValueError("no 'totals:' line in the callgrind output")
    return int(m.group(1))


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5, help="rounds counted (>= 1)")
    ap.add_argument("--json", metavar="OUT", help="write the count to this JSON file")
    ap.add_argument("--child", metavar="LIB", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.rounds < 1:
        ap.error("--rounds must be >= 1")
    if args.child:
        _child(args.child, args.rounds)
        return
    missing = [tool for tool in ("valgrind", "cc") if shutil.which(tool) is None]
    if missing:
        sys.exit(f"core_ir: needs {' and '.join(missing)} on PATH (Debian: apt install valgrind gcc)")
    with tempfile.TemporaryDirectory(prefix="sbs-core-ir-") as tmp:
        src, lib, out = (os.path.join(tmp, name) for name in ("helper.c", "helper.so", "callgrind.out"))
        with open(src, "w") as f:
            f.write(_HELPER)
        built = subprocess.run(
            ["cc", "-O1", "-shared", "-fPIC", "-o", lib, src], capture_output=True, text=True
        )
        if built.returncode:
            sys.exit(f"core_ir: compiling the callgrind helper failed (valgrind's headers?):\n{built.stderr}")
        print(f"core_ir: {args.rounds} rounds under callgrind (a minute or two)...", flush=True)
        cmd = [
            "valgrind",
            "--tool=callgrind",
            "--collect-atstart=no",
            f"--callgrind-out-file={out}",
            sys.executable,
            "-m",
            "sbs.bench.core_ir",
            "--rounds",
            str(args.rounds),
            "--child",
            lib,
        ]
        run = subprocess.run(cmd, capture_output=True, text=True)
        if run.returncode:
            sys.exit(f"core_ir: the counted run failed (exit {run.returncode}):\n{run.stderr[-2000:]}")
        with open(out) as f:
            total = total_instructions(f.read())
    per_round = total / args.rounds
    print(f"sbs round: {per_round / 1e6:.3f} M instructions (mean of {args.rounds} rounds)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"instructions_per_round": per_round, "rounds": args.rounds}, f, indent=2)
            f.write("\n")


if __name__ == "__main__":
    main()
