"""Run every toy spec under every modulation policy (protocol: both) and print a markdown table.

    python scripts/policy_table.py --db /tmp/policies.db [--specs specs/toy_*.yaml] [--workdir DIR]

Each (spec, policy) is one `vseam run SPEC --set modulation=... --set evaluate.protocol=both`;
the splits depend only on the spec's seed, so every policy of a spec sees the same questions.
The table is read back from the run registry: held-out (test) and in-sample (search split)
accuracy gain with the paired 95% bootstrap interval and McNemar p, and the random-head
control (the policy's scale values on random heads, mean ± sd over the draws).
"""

from __future__ import annotations

import argparse
import glob
import subprocess
import sys
import time

from vseam_run.store import RunStore

POLICIES = {
    "linear": "{policy: linear, lam: auto}",
    "topk": "{policy: topk}",
    "paper": "{policy: paper}",
    "learned": "{policy: learned}",
}


def _fmt_gain(m: dict, prefix: str) -> str:
    gain = m[f"{prefix}.accuracy.modulated"] - m[f"{prefix}.accuracy.baseline"]
    return (f"{m[f'{prefix}.accuracy.baseline']:.3f} → {m[f'{prefix}.accuracy.modulated']:.3f} ({gain:+.3f}; "
            f"[{m[f'{prefix}.accuracy.diff_ci_low']:+.3f}, {m[f'{prefix}.accuracy.diff_ci_high']:+.3f}], p {m[f'{prefix}.mcnemar_p']:.2f})")


def _fmt_control(m: dict, prefix: str) -> str:
    if f"{prefix}.control.gain_mean" not in m:
        return "– (no head changed)"
    return f"{m[f'{prefix}.control.gain_mean']:+.3f} ± {m[f'{prefix}.control.gain_sd']:.3f}"


def _params(doc: dict) -> str:
    p = doc.get("policy")
    if p == "linear":
        return f"λ = {doc['lambda']:g}"
    if p == "paper":
        return f"K = {doc['k']}, λ = {doc['lambda']:g}"
    if p == "topk":
        return f"k = {doc['k']}, α = {doc['alpha']:g}, β = {doc['beta']:g}"
    if p == "learned":
        return f"epoch {doc['best_epoch']}"
    return "–"


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--db", required=True)
    ap.add_argument("--specs", nargs="*", default=sorted(glob.glob("specs/toy_*.yaml")))
    ap.add_argument("--workdir", default=".vseam")
    ap.add_argument("--policies", nargs="*", default=list(POLICIES))
    args = ap.parse_args()
    rows = []
    for spec in args.specs:
        for pol in args.policies:
            t0 = time.perf_counter()
            cmd = [sys.executable, "-m", "vseam_run", "run", spec, "--db", args.db, "--set", f"modulation={POLICIES[pol]}",
                   "--set", "evaluate.protocol=both", "--set", f"workdir={args.workdir}"]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode != 0:
                print(proc.stdout[-3000:], proc.stderr[-3000:], file=sys.stderr)
                return proc.returncode
            with RunStore(args.db) as store:
                run = store.list_runs(limit=1)[0]
                doc = store.get_document(run.id, "modulation")
                m = store.get_run(run.id).metrics
            rows.append((spec.split("/")[-1].removesuffix(".yaml"), pol, _params(doc), int(m["modulation.heads_changed"]),
                         _fmt_gain(m, "eval.test"), _fmt_control(m, "eval.test"),
                         _fmt_gain(m, "eval.in_sample"), _fmt_control(m, "eval.in_sample"), time.perf_counter() - t0, run.id))
            print(f"done {rows[-1][0]} {pol} in {rows[-1][-2]:.0f}s", file=sys.stderr, flush=True)
    print("| spec | policy | chosen | heads changed | held-out test: baseline → modulated (gain; 95% CI, McNemar p) "
          "| held-out control gain | in-sample (search split): baseline → modulated (gain; 95% CI, p) | in-sample control gain | wall s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print("| " + " | ".join(str(x) for x in r[:8]) + f" | {r[8]:.0f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
