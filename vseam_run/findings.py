"""Findings across runs: `vseam compare` of many runs and `vseam share` (head sharing).

Pure functions over what the registry holds (records, the ``heads`` document, the stored
per-question effects and per-question results); the CLI modules only print them.

Head sets follow the search's own rule (`search.scoring.ranked`): the top-k strictly
positive entries of the ranking matrices (positive / negative for ``subset`` scoring,
±signed for ``signed``), among the exactly re-scored heads for ``attribution+verify``.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from vseam_run.errors import VseamError
from vseam_run.evaluate import mcnemar_exact_p
from vseam_run.search.uncertainty import HeadUncertainty, StoredEffects, decode_effects, resample, top_mask
from vseam_run.store import RunRecord, RunStore
from vseam_run.store.views import flatten, jsonable

TIMING_PREFIXES = ("time.",)
TIMING_NAMES = ("search.seconds",)
GROUPINGS = ("level", "category", "model", "seed")


# ---------------------------------------------------------------------- one run's heads


@dataclass
class HeadRun:
    """A finished head search of one run, as stored."""

    run: RunRecord
    scoring: str
    positive: np.ndarray
    negative: np.ndarray
    signed: np.ndarray
    verified: np.ndarray | None
    effects: StoredEffects | None
    uncertainty: HeadUncertainty | None

    @property
    def shape(self) -> tuple[int, int]:
        return self.positive.shape  # type: ignore[return-value]

    def rankings(self) -> tuple[np.ndarray, np.ndarray]:
        if self.scoring == "subset":
            return self.positive, self.negative
        return self.signed, -self.signed

    def top_masks(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        pos, neg = self.rankings()
        return top_mask(pos, k, self.verified), top_mask(neg, k, self.verified)


def load_head_run(store: RunStore, run: RunRecord) -> HeadRun | None:
    """The run's head search, or None when it has none."""
    heads = store.get_document(run.id, "heads")
    if not isinstance(heads, dict) or not all(k in heads for k in ("positive", "negative", "signed")):
        return None
    eff_doc = store.get_document(run.id, "search.effects")
    unc_doc = store.get_document(run.id, "heads.uncertainty")
    verified = heads.get("verified")
    return HeadRun(
        run=run,
        scoring=heads.get("scoring") or (run.spec().get("search") or {}).get("scoring", "subset"),
        positive=np.asarray(heads["positive"], dtype=np.float64),
        negative=np.asarray(heads["negative"], dtype=np.float64),
        signed=np.asarray(heads["signed"], dtype=np.float64),
        verified=None if verified is None else np.asarray(verified, dtype=bool),
        effects=None if eff_doc is None else decode_effects(eff_doc),
        uncertainty=None if unc_doc is None else HeadUncertainty.from_json(unc_doc),
    )


def head_list(mask: np.ndarray, score: np.ndarray) -> list[list[Any]]:
    """[[layer, head, score], ...] of a mask, best first."""
    ls, hs = np.nonzero(mask)
    rows = sorted(zip(ls.tolist(), hs.tolist()), key=lambda lh: (-score[lh], lh))
    return [[l, h, float(score[l, h])] for l, h in rows]


# ---------------------------------------------------------------------- statistics


def rankdata(x: np.ndarray) -> np.ndarray:
    """Ranks 1..n with ties given their average rank (as Spearman's rho needs)."""
    x = np.asarray(x, dtype=np.float64).ravel()
    order = np.argsort(x, kind="stable")
    ranks = np.empty(len(x))
    sorted_x = x[order]
    i = 0
    while i < len(x):
        j = i
        while j + 1 < len(x) and sorted_x[j + 1] == sorted_x[i]:
            j += 1
        ranks[order[i: j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def spearman(a: np.ndarray, b: np.ndarray) -> float | None:
    """Spearman's rank correlation of two equally shaped matrices (None if either is constant)."""
    ra, rb = rankdata(a), rankdata(b)
    if ra.std() == 0 or rb.std() == 0:
        return None
    return float(np.corrcoef(ra, rb)[0, 1])


def jaccard(a: set, b: set) -> float:
    """|A ∩ B| / |A ∪ B|; two empty sets count as 0 (nothing was found to share)."""
    union = len(a | b)
    return len(a & b) / union if union else 0.0


def _hypergeom_pmf(i: int, a: int, b: int, n: int) -> float:
    return math.comb(a, i) * math.comb(n - a, b - i) / math.comb(n, b)


def expected_overlap(a: int, b: int, n: int, metric: str) -> float:
    """Expected overlap of two random head sets of sizes a and b out of n heads.

    The intersection of a fixed a-set with a uniformly random b-set is hypergeometric;
    its mean is a·b/n; the Jaccard expectation sums i/(a+b−i) over that distribution."""
    if metric == "count":
        return a * b / n if n else 0.0
    lo, hi = max(0, a + b - n), min(a, b)
    total = 0.0
    for i in range(lo, hi + 1):
        union = a + b - i
        if union:
            total += _hypergeom_pmf(i, a, b, n) * i / union
    return total


def overlap(a: set, b: set, metric: str) -> float:
    return float(len(a & b)) if metric == "count" else jaccard(a, b)


def _as_set(mask: np.ndarray) -> set[tuple[int, int]]:
    ls, hs = np.nonzero(mask)
    return set(zip(ls.tolist(), hs.tolist()))


# ---------------------------------------------------------------------- compare


def _spec_diff(runs: list[RunRecord]) -> list[dict[str, Any]]:
    flats = [flatten(r.spec()) for r in runs]
    missing = object()
    out = []
    for key in sorted(set().union(*flats)):
        values = [f.get(key, missing) for f in flats]
        if any(v is missing for v in values) or any(v != values[0] or type(v) is not type(values[0]) for v in values):
            out.append({"field": key, "values": [None if v is missing else v for v in values]})
    return out


def _env(run: RunRecord) -> dict[str, Any]:
    env: dict[str, Any] = {"model": run.model_name, "model_hash": run.model_hash, "device": run.device, "seed": run.seed}
    env.update({f"versions.{k}": v for k, v in run.versions.items()})
    return env


def _env_diff(runs: list[RunRecord]) -> list[dict[str, Any]]:
    envs = [_env(r) for r in runs]
    keys = sorted(set().union(*envs))
    return [{"field": k, "values": [e.get(k) for e in envs]} for k in keys
            if len({repr(e.get(k)) for e in envs}) > 1]


def is_timing(name: str) -> bool:
    return name.startswith(TIMING_PREFIXES) or name in TIMING_NAMES


def _metric_rows(runs: list[RunRecord], include_timings: bool) -> list[dict[str, Any]]:
    names = sorted(set().union(*(r.metrics for r in runs)))
    rows = []
    for name in names:
        if is_timing(name) and not include_timings:
            continue
        values = [r.metric(name) for r in runs]
        first = values[0]
        deltas = [None if first is None or v is None else v - first for v in values]
        deltas[0] = None
        rows.append({"name": name, "values": values, "deltas": deltas})
    return rows


def _pair_heads(a: HeadRun, b: HeadRun, k: int) -> dict[str, Any]:
    if a.shape != b.shape:
        return {"a": a.run.id, "b": b.run.id, "comparable": False,
                "reason": f"head grids differ: {a.shape[0]}×{a.shape[1]} vs {b.shape[0]}×{b.shape[1]}"}
    out: dict[str, Any] = {"a": a.run.id, "b": b.run.id, "comparable": True, "k": k}
    (pa, na), (pb, nb) = a.top_masks(k), b.top_masks(k)
    ra = a.rankings()
    n = a.positive.size
    for kind, ma, mb, sa in (("positive", pa, pb, ra[0]), ("negative", na, nb, ra[1])):
        sa_set, sb_set = _as_set(ma), _as_set(mb)
        shared = sorted(sa_set & sb_set, key=lambda lh: (-sa[lh], lh))
        out[kind] = {
            "a_heads": len(sa_set), "b_heads": len(sb_set),
            "jaccard": jaccard(sa_set, sb_set),
            "jaccard_random": expected_overlap(len(sa_set), len(sb_set), n, "jaccard"),
            "shared": [[l, h] for l, h in shared],
            "only_a": sorted([list(x) for x in sa_set - sb_set]),
            "only_b": sorted([list(x) for x in sb_set - sa_set]),
        }
    out["spearman"] = {kind: spearman(getattr(a, kind), getattr(b, kind)) for kind in ("positive", "negative", "signed")}
    return out


def _effective_world_seed(run: RunRecord) -> Any:
    spec = run.spec()
    toy = (spec.get("data") or {}).get("toyworld") or {}
    return toy.get("seed") if toy.get("seed") is not None else spec.get("seed")


def same_questions(a: RunRecord, b: RunRecord) -> bool:
    """Whether equal question ids mean the same questions: the same data section, and for the
    generated toy world the same world seed (which defaults to the run's seed)."""
    da, db = a.spec().get("data") or {}, b.spec().get("data") or {}
    if da != db:
        return False
    return da.get("source") != "toyworld" or _effective_world_seed(a) == _effective_world_seed(b)


def unpaired_reason(store: RunStore, a: RunRecord, b: RunRecord, stage: str = "eval.test.modulated") -> str:
    """Why two runs get no paired test, in words (the runs share no questions, or one has no
    per-question results to pair)."""
    if not same_questions(a, b):
        da, db = a.spec().get("data") or {}, b.spec().get("data") or {}
        if da != db:
            fields = sorted(k for k in set(da) | set(db) if da.get(k) != db.get(k))
            return f"the runs share no questions: their data sections differ ({', '.join('data.' + f for f in fields)})"
        return "the runs share no questions: the toy world was generated from different seeds"
    for run in (a, b):
        if not store.question_results(run.id, stage):
            return f"run {run.id} has no per-question results for {stage} (no evaluation stage, or it did not finish)"
    return f"no {stage} question was scored by both runs with the same gold answer"


def paired_test(store: RunStore, a: RunRecord, b: RunRecord, stage: str = "eval.test.modulated") -> dict[str, Any] | None:
    """McNemar's exact test of two runs' correctness on the test questions both scored, and the
    questions that flipped; None when they did not score the same questions."""
    if not same_questions(a, b):
        return None
    ra = {r["qid"]: r for r in store.question_results(a.id, stage)}
    rb = {r["qid"]: r for r in store.question_results(b.id, stage)}
    common = [q for q in ra if q in rb and ra[q]["gold"] == rb[q]["gold"] and ra[q]["correct"] is not None
              and rb[q]["correct"] is not None]
    if not common:
        return None
    ca = np.array([bool(ra[q]["correct"]) for q in common])
    cb = np.array([bool(rb[q]["correct"]) for q in common])
    flipped = [{"qid": q, "gold": ra[q]["gold"], "a_pred": ra[q]["pred"], "b_pred": rb[q]["pred"],
                "a_correct": bool(ra[q]["correct"]), "b_correct": bool(rb[q]["correct"])}
               for q, x, y in zip(common, ca, cb) if x != y]
    return {"a": a.id, "b": b.id, "stage": stage, "n": len(common), "accuracy_a": float(ca.mean()),
            "accuracy_b": float(cb.mean()), "mcnemar_p": mcnemar_exact_p(ca, cb),
            "a_only_correct": int((ca & ~cb).sum()), "b_only_correct": int((~ca & cb).sum()), "flipped": flipped}


@dataclass
class Comparison:
    runs: list[RunRecord]
    spec_diff: list[dict[str, Any]]
    env_diff: list[dict[str, Any]]
    metrics: list[dict[str, Any]]
    heads: list[dict[str, Any]]
    paired: list[dict[str, Any]]
    head_runs: list[HeadRun | None] = field(default_factory=list)
    #: Pairs of runs without a paired test, and why: {"a", "b", "reason"}.
    unpaired: list[dict[str, Any]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return jsonable({
            "runs": [{"run_id": r.id, "name": r.name, "seed": r.seed, "model": r.model_name, "status": r.shown_status()}
                     for r in self.runs],
            "spec_diff": self.spec_diff, "env_diff": self.env_diff, "metrics": self.metrics,
            "heads": self.heads, "paired": self.paired, "unpaired": self.unpaired,
        })


def compare(store: RunStore, run_ids: list[str], *, k: int | None = None, include_timings: bool = False) -> Comparison:
    """Many runs side by side: differing spec fields, metrics with deltas against the first run,
    pairwise head-set overlaps and rank correlations, and paired tests on shared test questions."""
    if len(run_ids) < 2:
        raise VseamError("compare needs at least two runs")
    runs = [store.get_run(i) for i in run_ids]
    head_runs = [load_head_run(store, r) for r in runs]
    searched = [h for h in head_runs if h is not None]
    top_k = k or min(int((h.run.spec().get("search") or {}).get("top_k", 10)) for h in searched) if searched else (k or 10)
    heads = [_pair_heads(a, b, top_k) for a, b in itertools.combinations(searched, 2)]
    paired, unpaired = [], []
    for a, b in itertools.combinations(runs, 2):
        p = paired_test(store, a, b)
        if p is not None:
            paired.append(p)
        else:
            unpaired.append({"a": a.id, "b": b.id, "reason": unpaired_reason(store, a, b)})
    spec_diff = _spec_diff(runs)
    # A field that differs in the spec (seed) is listed there, not again under the environment.
    env_diff = [d for d in _env_diff(runs) if d["field"] not in {s["field"] for s in spec_diff}]
    return Comparison(runs, spec_diff, env_diff, _metric_rows(runs, include_timings), heads, paired, head_runs, unpaired)


def comparison_figure(c: Comparison, path: Any) -> Any:
    """Positive / negative / signed matrices of every searched run, one colour scale per row."""
    from vseam_run import report

    hrs = [h for h in c.head_runs if h is not None]
    if not hrs:
        raise VseamError("none of these runs has a head search to draw")
    if len({h.shape for h in hrs}) > 1:
        raise VseamError("these runs' head grids differ in size; a side-by-side figure needs one model shape")
    k = c.heads[0]["k"] if c.heads else 10
    rows = [("positive", [h.positive for h in hrs], False), ("negative", [h.negative for h in hrs], False),
            ("signed (base − ablated)", [h.signed for h in hrs], True)]
    tops = [[head_list(h.top_masks(k)[0], h.rankings()[0]) for h in hrs],
            [head_list(h.top_masks(k)[1], h.rankings()[1]) for h in hrs], [[] for _ in hrs]]
    titles = [f"{h.run.name}\n{h.run.id} · seed {h.run.seed}" for h in hrs]
    return report.heatmap_grid(rows, titles, path, title=f"head scores, one colour scale per row, top-{k}", tops=tops)


# ---------------------------------------------------------------------- share


def group_of(run: RunRecord, by: str) -> str:
    spec = run.spec()
    data = spec.get("data") or {}
    if by == "level":
        return str(data.get("level") or "all")
    if by == "category":
        cats = data.get("categories")
        return ",".join(cats) if cats else "all"
    if by == "model":
        return run.model_name or str(spec.get("model"))
    if by == "seed":
        return str(run.seed if run.seed is not None else spec.get("seed"))
    raise VseamError(f"--by {by!r}: choose one of {', '.join(GROUPINGS)}")


@dataclass
class GroupSummary:
    """Mean pairwise overlap of within-group or across-group pairs, with its interval."""

    pairs: int
    observed: float | None
    low: float | None
    high: float | None
    random: float | None

    def to_json(self) -> dict[str, Any]:
        return {"pairs": self.pairs, "observed": self.observed, "interval": [self.low, self.high],
                "random_expectation": self.random,
                "excess_over_random": None if self.observed is None or self.random is None else self.observed - self.random}


@dataclass
class Share:
    runs: list[HeadRun]
    groups: list[str]
    by: str
    k: int
    metric: str
    n_boot: int
    observed: dict[str, np.ndarray]  # kind → [R, R]
    random: dict[str, np.ndarray]
    low: dict[str, np.ndarray]
    high: dict[str, np.ndarray]
    summary: dict[str, dict[str, GroupSummary]]  # kind → within/across
    difference: dict[str, dict[str, Any]]  # kind → within − across, with interval
    top_sets: dict[str, list[list[list[int]]]]
    notes: list[str]

    def to_json(self) -> dict[str, Any]:
        m = lambda a: [[None if not np.isfinite(v) else float(v) for v in r] for r in a]  # noqa: E731
        return jsonable({
            "runs": [{"run_id": h.run.id, "name": h.run.name, "group": g, "seed": h.run.seed, "model": h.run.model_name,
                      "positive_heads": len(self.top_sets["positive"][i]), "negative_heads": len(self.top_sets["negative"][i])}
                     for i, (h, g) in enumerate(zip(self.runs, self.groups))],
            "by": self.by, "k": self.k, "metric": self.metric, "n_boot": self.n_boot,
            **{kind: {"matrix": m(self.observed[kind]), "random": m(self.random[kind]),
                      "interval_low": m(self.low[kind]), "interval_high": m(self.high[kind]),
                      "within": self.summary[kind]["within"].to_json(), "across": self.summary[kind]["across"].to_json(),
                      "within_minus_across": self.difference[kind], "top_heads": self.top_sets[kind]}
               for kind in ("positive", "negative")},
            "notes": self.notes,
        })


def _basic_interval(observed: float, draws: np.ndarray, alpha: float, metric: str) -> tuple[float, float]:
    """Basic bootstrap interval [2θ − q(1−α/2), 2θ − q(α/2)]. The plain percentile interval of an
    overlap is biased low (resampled top sets are noisier than the observed ones, so they overlap
    less); the basic interval corrects for that shift. Overlaps are clipped to their range."""
    q_lo, q_hi = (float(v) for v in np.quantile(draws, [alpha, 1 - alpha]))
    lo, hi = 2 * observed - q_hi, 2 * observed - q_lo
    if metric == "jaccard":
        lo, hi = max(0.0, lo), min(1.0, hi)
    elif metric == "count":
        lo = max(0.0, lo)
    elif metric == "difference":
        lo, hi = max(-1.0, lo), min(1.0, hi)
    return lo, hi


def _pair_matrix(sets: list[set], metric: str) -> np.ndarray:
    r = len(sets)
    out = np.full((r, r), np.nan)
    for i, j in itertools.product(range(r), repeat=2):
        out[i, j] = overlap(sets[i], sets[j], metric)
    return out


def _pairs(groups: list[str], within: bool) -> list[tuple[int, int]]:
    return [(i, j) for i, j in itertools.combinations(range(len(groups)), 2) if (groups[i] == groups[j]) == within]


def _mean_over(mat: np.ndarray, pairs: list[tuple[int, int]]) -> float | None:
    return float(np.mean([mat[i, j] for i, j in pairs])) if pairs else None


def share(
    head_runs: list[HeadRun],
    *,
    by: str = "level",
    k: int = 10,
    metric: str = "jaccard",
    n_boot: int = 200,
    seed: int = 0,
    level: float = 0.95,
) -> Share:
    """Pairwise overlap of top-k positive and negative head sets, grouped within vs across `by`,
    against random head sets of the same sizes, with percentile intervals from resampling each
    run's search questions (each run independently, `n_boot` times)."""
    if metric not in ("jaccard", "count"):
        raise VseamError(f"--metric {metric!r}: choose jaccard or count")
    if len(head_runs) < 2:
        raise VseamError("share needs at least two runs with a head search")
    shapes = {h.shape for h in head_runs}
    if len(shapes) > 1:
        raise VseamError(f"these runs' head grids differ ({', '.join(f'{a}×{b}' for a, b in sorted(shapes))}); "
                         "head sets can only be compared within one model shape")
    groups = [group_of(h.run, by) for h in head_runs]
    n_heads = head_runs[0].positive.size
    notes: list[str] = []
    masks = [h.top_masks(k) for h in head_runs]
    sets = {"positive": [_as_set(m[0]) for m in masks], "negative": [_as_set(m[1]) for m in masks]}
    observed = {kind: _pair_matrix(s, metric) for kind, s in sets.items()}
    random = {kind: np.array([[expected_overlap(len(a), len(b), n_heads, metric) for b in s] for a in s])
              for kind, s in sets.items()}
    # Bootstrap: every run's top sets under resampled questions; replicate b pairs resample b of each run.
    boot_sets: dict[str, list[list[set] | None]] = {"positive": [], "negative": []}
    for i, h in enumerate(head_runs):
        if h.effects is None:
            notes.append(f"{h.run.id}: no stored per-question effects (searched before they were kept); no interval")
            boot_sets["positive"].append(None)
            boot_sets["negative"].append(None)
            continue
        pos_b, neg_b = [], []
        for chunk in resample(h.effects.effects, h.effects.correct, h.scoring, n_boot, seed + 7919 * i):
            pos_b += [_as_set(m) for m in top_mask(chunk.pos_rank, k, h.verified)]
            neg_b += [_as_set(m) for m in top_mask(chunk.neg_rank, k, h.verified)]
        boot_sets["positive"].append(pos_b)
        boot_sets["negative"].append(neg_b)
    alpha = (1 - level) / 2
    r = len(head_runs)
    low = {kind: np.full((r, r), np.nan) for kind in sets}
    high = {kind: np.full((r, r), np.nan) for kind in sets}
    summary: dict[str, dict[str, GroupSummary]] = {}
    difference: dict[str, dict[str, Any]] = {}
    within_pairs, across_pairs = _pairs(groups, True), _pairs(groups, False)
    all_boot = all(b is not None for b in boot_sets["positive"])
    for kind in sets:
        bs = boot_sets[kind]
        reps: dict[tuple[int, int], np.ndarray] = {}
        for i, j in itertools.combinations(range(r), 2):
            if bs[i] is None or bs[j] is None:
                continue
            reps[(i, j)] = np.array([overlap(x, y, metric) for x, y in zip(bs[i], bs[j])])
            low[kind][i, j], high[kind][i, j] = _basic_interval(observed[kind][i, j], reps[(i, j)], alpha, metric)
            low[kind][j, i], high[kind][j, i] = low[kind][i, j], high[kind][i, j]
        summary[kind] = {}
        means: dict[str, np.ndarray | None] = {}
        for name, pairs in (("within", within_pairs), ("across", across_pairs)):
            obs = _mean_over(observed[kind], pairs)
            rnd = _mean_over(random[kind], pairs)
            if pairs and all_boot:
                means[name] = np.mean([reps[p] for p in pairs], axis=0)
                lo, hi = _basic_interval(obs, means[name], alpha, metric)
            else:
                means[name], lo, hi = None, None, None
            summary[kind][name] = GroupSummary(len(pairs), obs, lo, hi, rnd)
        w, a = summary[kind]["within"].observed, summary[kind]["across"].observed
        diff: dict[str, Any] = {"observed": None if w is None or a is None else w - a, "interval": [None, None]}
        if means.get("within") is not None and means.get("across") is not None:
            d = means["within"] - means["across"]
            diff["interval"] = list(_basic_interval(diff["observed"], d, alpha, "difference"))
        difference[kind] = diff
    notes.append("intervals: basic (reverse-percentile) bootstrap; resampling a run's questions adds noise to its top "
                 "set, which lowers resampled overlaps, and this interval reflects that shift back around the observed value")
    if not within_pairs:
        notes.append(f"no two runs share a {by}: no within-group pairs")
    if not across_pairs:
        notes.append(f"all runs share one {by}: no across-group pairs")
    top_sets = {kind: [sorted([list(x) for x in s]) for s in sets[kind]] for kind in sets}
    return Share(head_runs, groups, by, k, metric, n_boot, observed, random, low, high, summary, difference, top_sets, notes)


def share_figure(s: Share, path: Any) -> Any:
    from vseam_run import report

    labels = [f"{g} · s{h.run.seed} · {h.run.id[-6:]}" for h, g in zip(s.runs, s.groups)]
    panels = {kind: {name: s.summary[kind][name] for name in ("within", "across")} for kind in ("positive", "negative")}
    return report.overlap_figure(
        {kind: s.observed[kind] for kind in ("positive", "negative")}, labels, s.groups, panels, path,
        metric=s.metric, title=f"top-{s.k} head sharing across runs, grouped by {s.by} "
                               f"({s.n_boot} question resamples per run, 95% intervals)",
    )


def load_runs_for(store: RunStore, refs: list[str], sweep: str | None, tags: list[str] | None) -> list[RunRecord]:
    """Runs named on the command line, plus those of a sweep / with tags (succeeded ones)."""
    from vseam_run.store.labels import labels as run_labels
    from vseam_run.store.labels import runs_with

    ids = [store.resolve(r) for r in refs]
    if sweep:
        found = runs_with(store, "sweep", sweep)
        if not found:
            raise VseamError(f"no runs of sweep {sweep!r} in {store.where}", hint="vseam runs --json lists sweeps")
        ids += found
    if tags:
        every = store.list_runs()
        labs = run_labels(store, [r.id for r in every])
        ids += [r.id for r in reversed(every) if all(t in labs[r.id].tags for t in tags)]
    ids = list(dict.fromkeys(ids))
    records = [store.get_run(i) for i in ids]
    if sweep or tags:
        records = [r for r in records if r.status == "succeeded" or r.id in refs]
    return records


def sort_by_group(head_runs: list[HeadRun], by: str) -> list[HeadRun]:
    order: Callable[[HeadRun], Any] = lambda h: (group_of(h.run, by), h.run.seed if h.run.seed is not None else 0, h.run.id)  # noqa: E731
    return sorted(head_runs, key=order)
