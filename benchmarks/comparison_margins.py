"""Measurement: does every comparison test keep its verdict on another CPU (issue 26)?

The tests marked `comparison` assert a verdict between floating-point results (a method beats another, a score clears
a bar) with a stated margin through `tests/margins.py`, which records each observed gap. This script runs them once
per environment below and reports, per check, its margin and the smallest gap it kept. A CPU of another kind runs
other SIMD kernels, so its sums run in another order; the environments reproduce that here:
  * native: this CPU's kernels, the threads pytest leaves;
  * generic kernels: ATen's scalar kernels (ATEN_CPU_CAPABILITY=default), MKL's SSE4.2 GEMMs, oneDNN's SSE4.1
    convolutions and numba compiled for a generic x86-64, all with other accumulation orders; torch.compile off
    (TORCHDYNAMO_DISABLE: inductor's scalar C++ does not build in torch 2.13), so compiled paths run eagerly;
  * one thread: the same kernels as native, every intra-op reduction split in one piece.
A check is safe when its smallest gap exceeds its margin in every environment; `headroom` is the smallest
(gap − margin) over environments.

`--paper` adds the claims on the smoke run's outputs (`tests/test_paper_claims.py`): the smoke run of every notebook
is redone under each environment (about 10 minutes each), replacing `data/runs/<model>/smoke`.

Run:  .venv/bin/python benchmarks/comparison_margins.py [--paper] [-k EXPR] [--environments native,"one thread"]
The last stdout line is one JSON object; pytest's own output goes to stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ENVIRONMENTS = {
    "native": {},
    "generic kernels": {"ATEN_CPU_CAPABILITY": "default", "MKL_ENABLE_INSTRUCTIONS": "SSE4_2",
                        "ONEDNN_MAX_CPU_ISA": "SSE41", "NUMBA_CPU_NAME": "generic", "TORCHDYNAMO_DISABLE": "1"},
    "one thread": {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "NUMBA_NUM_THREADS": "1"},
}


def run_checks(extra_env: dict, paper: bool, keyword: str | None) -> list[dict]:
    """The recorded checks of one pytest run of the comparison tests under `extra_env`."""
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "margins.jsonl"
        marker = "comparison" if paper else "comparison and not notebook"
        command = [sys.executable, "-m", "pytest", "-m", marker, "-q", "-p", "no:cacheprovider"]
        if keyword:
            command += ["-k", keyword]
        if paper:
            for smoke in (ROOT / "data" / "runs").glob("*/smoke"):
                shutil.rmtree(smoke)
        env = os.environ | extra_env | {"QSD_MARGIN_REPORT": str(report)}
        subprocess.run(command, cwd=ROOT, env=env, stdout=sys.stderr, check=False)
        return [json.loads(line) for line in report.read_text().splitlines()] if report.exists() else []


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--paper", action="store_true", help="also the smoke run's paper claims (slow)")
    parser.add_argument("-k", dest="keyword", help="only tests matching this pytest -k expression")
    parser.add_argument("--environments", default=",".join(ENVIRONMENTS),
                        help=f"comma-separated, of: {', '.join(ENVIRONMENTS)}")
    args = parser.parse_args()
    chosen = args.environments.split(",")
    unknown = set(chosen) - set(ENVIRONMENTS)
    if unknown:
        parser.error(f"unknown environments {sorted(unknown)}; choose from {', '.join(ENVIRONMENTS)}")
    checks: dict[tuple[str, str], dict] = {}
    for name in chosen:
        extra = ENVIRONMENTS[name]
        print(f"== {name}", file=sys.stderr, flush=True)
        for record in run_checks(extra, args.paper, args.keyword):
            check = checks.setdefault((record["test"], record["what"]),
                                      {"margin": record["margin"], "absolute": record["bound"] == 0, "gaps": {}})
            check["gaps"][name] = min(record["gap"], check["gaps"].get(name, float("inf")))
    rows = []
    print(f"{'test :: check':<100} {'margin':>7} " + " ".join(f"{n:>16}" for n in chosen), file=sys.stderr)
    for (test, what), check in sorted(checks.items()):
        gaps = check["gaps"]
        missing = [n for n in chosen if n not in gaps]
        headroom = min(gaps.values()) - check["margin"]
        rows.append({"test": test, "check": what, "margin": check["margin"], "absolute": check["absolute"],
                     "gaps": gaps, "headroom": headroom, "missing_in": missing})
        shown = "{:>16.3f}" if check["absolute"] else "{:>16.2%}"  # a gap to a bound of 0 is absolute
        print(f"{(test.split('/')[-1] + ' :: ' + what)[:100]:<100} {shown.format(check['margin'])[-7:]:>7} "
              + " ".join(shown.format(gaps[n]) if n in gaps else f"{'-':>16}" for n in chosen), file=sys.stderr)
    held = sum(r["headroom"] > 0 and not r["missing_in"] for r in rows)
    print(json.dumps({"name": "comparison_margins", "environments": chosen, "checks": len(rows),
                      "held_everywhere": held, "smallest_headroom": min((r["headroom"] for r in rows), default=None),
                      "rows": rows}))


if __name__ == "__main__":
    main()
