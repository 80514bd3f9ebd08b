"""The edit-sense table (README, "Visual semantic editing"): per category, questions / planned /
sensible, on the format samples and on the held-back set (tests/fixtures/gqa_heldback/).

Run: python -m scripts.edit_sense [-v]   (-v lists every outcome that is not sensible)
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from vseam_run.data.gqa import read_gqa
from vseam_run.edit.sense import sense_table, verdicts

FIXTURES = Path(__file__).resolve().parents[1] / "tests" / "fixtures"
SAMPLES = ["gqa_object_animal.json", "gqa_attribute_color.json", "gqa_attribute_material.json",
           "gqa_relation_action.json", "gqa_relation_spatial.json"]  # fmt: skip
ORDER = ["animal", "indoor", "vehicle", "color", "material", "action", "spatial"]


def sample_verdicts():
    expect = {k: v for k, v in json.loads((FIXTURES / "edit_sense_samples.json").read_text()).items() if k[0] != "_"}
    return [v for name in SAMPLES for v in verdicts(read_gqa(FIXTURES / name, FIXTURES, category_from_file=True).questions, expect)]


def heldback_verdicts(folder: str = "gqa_heldback"):
    out = []
    for f in sorted((FIXTURES / folder).glob("*.json")):
        recs = json.loads(f.read_text())
        expect = {qid: r["vseam_expect"] for qid, r in recs.items()}
        out += verdicts(read_gqa(f, f.parent, category_from_file=True).questions, expect)
    return out


def main(verbose: bool = False) -> None:
    tables = {"format samples": sample_verdicts(), "issue's cases + more": heldback_verdicts(),
              "held-back set": heldback_verdicts("gqa_heldback2")}
    print("| category | " + " | ".join(f"{k}: planned / sensible of n" for k in tables) + " |")
    print("|---|" + "---|" * len(tables))
    sums = {k: sense_table(v) for k, v in tables.items()}
    for cat in ORDER:
        cells = []
        for k in tables:
            r = sums[k].get(cat)
            cells.append(f"{r['planned']} / {r['sensible']} of {r['questions']}" if r else "—")
        print(f"| {cat} | " + " | ".join(cells) + " |")
    if verbose:
        for k, vs in tables.items():
            for v in vs:
                if not v.sensible:
                    print(f"{k}: {v.category} {v.qid}: {v.outcome}   (expected {v.expect})")


if __name__ == "__main__":
    main("-v" in sys.argv)
