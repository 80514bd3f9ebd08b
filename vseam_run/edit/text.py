"""The edit text, written from the question itself: which concept changes into which, where, and
what the edited image should answer.

A question names its concept in words ("Is the car *red*?", "Is there a *dog* in this
picture?", "Is the woman *holding* the skis?"); the semantic program and the object list say
which object it is about, and the scene graph (when present) gives boxes and the actual
attribute. Rules, by level:

  object     "Is there a <noun>…?" answered yes → swap <noun> for another noun of *its own*
             category (animal / indoor / vehicle, looked up from the word; not a synonym or
             sub-type); the edited image should answer no.
  attribute  a color / material: answered yes → another value (edited answer no); answered no →
             the asked value (edited answer yes); "What color is…" → another color (edited answer:
             that color); "Is it A or B?" → the other one.
  relation   spatial → its opposite (left ↔ right, in front of ↔ behind, …); action → another
             action (holding → throwing, …); yes/no answers flip as for attributes.

Anything else is skipped with a reason, never guessed: an absent object (nothing to repaint), a
word with no vocabulary, no box for the object, a swap that leaves another instance in the image.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterable

from vseam_run.data.base import Box, Question
from vseam_run.data.gqa import OBJECT_CATEGORY, relation_of
from vseam_run.errors import VseamError

YES, NO = "yes", "no"

# --- vocabularies -----------------------------------------------------------------------------


def _objects_of(category: str) -> list[str]:
    return sorted(k for k, v in OBJECT_CATEGORY.items() if v == category and k not in ("animal", "vehicle"))


#: Built-in replacement vocabularies for GQA-style photos, by category. Targets are drawn from
#: these; the spec's edit.text.vocabularies is merged over them.
GQA_VOCABULARIES: dict[str, list[str]] = {
    "animal": _objects_of("animal"),
    "indoor": _objects_of("indoor"),
    "vehicle": _objects_of("vehicle"),
    "color": "red blue green yellow white black purple orange pink brown gray".split(),
    "material": "wood metal plastic glass brick stone".split(),
    "spatial": ["to the left of", "to the right of", "above", "below", "in front of", "behind", "on", "under",
                "inside", "outside"],
    "action": ["holding", "throwing", "carrying", "eating", "riding", "feeding", "sitting on", "standing on",
               "lying on", "walking on", "looking at", "touching", "pushing", "pulling", "wearing", "playing with"],
}  # fmt: skip

#: Words that name a vocabulary value in another form ("metallic" → metal).
SYNONYMS: dict[str, str] = {
    "metallic": "metal", "wooden": "wood", "grey": "gray", "glassy": "glass", "stony": "stone",
    "plastics": "plastic", "bricks": "brick", "left of": "to the left of", "right of": "to the right of",
    "on top of": "on", "underneath": "under", "beneath": "under", "inside of": "inside", "outside of": "outside",
}  # fmt: skip

#: Values recognised in questions but never drawn as targets (too close to others to check).
RECOGNISED_ONLY: dict[str, list[str]] = {
    "color": "tan beige cream silver gold maroon khaki navy turquoise teal blond".split(),
    "material": "concrete leather cloth paper ceramic porcelain wicker cement steel".split(),
}

#: Words that shade a colour ("dark blue") but are no colour alone ("Is the hair dark?" has no
#: definite colour to change; "dark blue" is one value, not "dark" and "blue").
COLOR_SHADES: tuple[str, ...] = ("dark", "light", "bright", "pale", "deep")

#: Object words of one kind: a synonym or a sub-type of another ("bicycle" / "bike", "cow" /
#: "calf", "bird" / "parrot") is no object edit, so targets never come from the source's kind.
SAME_KIND: tuple[frozenset[str], ...] = tuple(frozenset(g.split()) for g in (
    "bike bicycle", "motorcycle motorbike scooter", "airplane plane jet", "boat ship", "car taxi suv jeep",
    "cart wagon carriage", "train tram", "truck van ambulance",
    "cow calf", "dog puppy", "cat kitten", "sheep lamb", "bear panda", "deer antelope",
    "bird duck goose chicken pigeon seagull parrot owl eagle swan",
    "table desk counter", "couch sofa armchair ottoman", "chair armchair stool", "refrigerator fridge",
    "television tv monitor computer laptop", "rug carpet", "shelf shelves bookshelf",
    "cabinet cupboard drawer dresser nightstand", "curtain curtains",
))  # fmt: skip


def same_kind(a: str, b: str) -> bool:
    """Whether two object words name the same kind of thing (a synonym, a sub-type, a plural)."""
    a, b = _singular(a), _singular(b)
    return a == b or any(a in g and b in g for g in SAME_KIND)


def _singular(word: str) -> str:
    w = _norm(word)
    if w in OBJECT_CATEGORY or w in ("shelves",):
        return w
    for suffix in ("es", "s"):
        if w.endswith(suffix) and w.removesuffix(suffix) in OBJECT_CATEGORY:
            return w.removesuffix(suffix)
    return w


#: A spatial relation's opposite.
SPATIAL_OPPOSITE: dict[str, str] = {
    "to the left of": "to the right of", "to the right of": "to the left of", "above": "below", "below": "above",
    "in front of": "behind", "behind": "in front of", "on": "under", "under": "on", "inside": "outside",
    "outside": "inside", "next to": "far from", "near": "far from", "far from": "next to", "beside": "far from",
}  # fmt: skip

#: Another action that visibly differs (posture ↔ posture, hand action ↔ hand action).
ACTION_ALTERNATIVE: dict[str, str] = {
    "holding": "throwing", "throwing": "holding", "carrying": "dropping", "eating": "smelling",
    "riding": "feeding", "feeding": "riding", "sitting on": "standing on", "standing on": "sitting on",
    "lying on": "standing on", "walking on": "sitting on", "looking at": "touching", "touching": "looking at",
    "pushing": "pulling", "pulling": "pushing", "wearing": "holding", "playing with": "holding",
    "sitting in": "standing in", "standing in": "sitting in", "walking in": "sitting in",
    "linked to": "not linked to", "not linked to": "linked to",
}  # fmt: skip

#: Things ridden that are held or carried when not ridden (skis, boards).
_RIDDEN_HELD = frozenset("skateboard surfboard snowboard skis ski board sled kite".split())
#: Vehicles small enough to push; a person next to a train or bus instead stands beside it.
_PUSHED = frozenset("bike bicycle motorcycle motorbike scooter cart wagon stroller".split())
#: Animals people ride (feeding one ↔ riding it); feeding another animal becomes looking at it.
_RIDDEN_ANIMALS = frozenset("horse elephant camel donkey pony mule".split())


def action_alternative(action: str, obj: str) -> str | None:
    """Another action that visibly differs *and fits the object acted on*: riding a horse → feeding
    it, but riding a train → standing next to it, riding a bike → pushing it (issue 24: "riding →
    feeding" on a train). None when no alternative fits."""
    noun = _singular(obj.split()[-1]) if obj.split() else ""
    kind = OBJECT_CATEGORY.get(noun, "other")
    if action == "riding":
        if kind == "animal":
            return "feeding"
        if noun in _PUSHED:
            return "pushing"
        if kind == "vehicle":
            return "standing next to"
        return "carrying" if noun in _RIDDEN_HELD else None
    if action == "feeding":
        if kind != "animal":
            return "holding"
        return "riding" if noun in _RIDDEN_ANIMALS else "looking at"
    return ACTION_ALTERNATIVE.get(action)

#: The toy world's vocabularies (its shapes, colors, fill textures and relations).
TOY_VOCABULARIES: dict[str, list[str]] = {
    "round": ["circle", "ring"], "boxy": ["square", "cross"], "pointy": ["triangle", "diamond"],
    "color": ["red", "green", "blue", "yellow"], "material": ["solid", "striped", "dotted"],
    "spatial": ["to the left of", "to the right of", "above", "below"], "link": ["linked to", "not linked to"],
}  # fmt: skip

OBJECT_LEVEL_CATEGORIES = frozenset({"animal", "indoor", "vehicle", "round", "boxy", "pointy"})


def vocabularies_for(q: Question, overrides: dict[str, list[str]] | None = None) -> dict[str, list[str]]:
    """The vocabularies a question's edit draws from: the toy world's for toy questions, else GQA's."""
    base = TOY_VOCABULARIES if q.extra.get("source") == "toyworld" else GQA_VOCABULARIES
    return {**base, **{k.lower(): [w.lower() for w in v] for k, v in (overrides or {}).items()}}


# --- the plan -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class EditPlan:
    """One concept edit: what changes, where, and what the edited image should answer.

    `source` → `target` are the concept words ("purple" → "green", "dog" → "cat",
    "holding" → "throwing"); `source` is "" when the image's actual value is unknown (a "no"
    question with no scene graph). `source_phrase` / `target_phrase` describe the masked
    region before and after ("purple pants" / "green pants") for the inpainting prompt and the
    concept check. `boxes` are the regions to repaint. `counterfactual_question` is the question
    with the concept swapped (the text-side edit of the original method).
    """

    qid: str
    level: str
    category: str
    source: str
    target: str
    source_phrase: str
    target_phrase: str
    boxes: tuple[Box, ...]
    question: str
    original_answer: str
    expected_answer: str
    counterfactual_question: str
    rewritten_by: str = ""

    @property
    def text(self) -> str:
        return f"{self.source or '?'} → {self.target}"

    def prompt(self, template: str) -> str:
        return template.format(target=self.target_phrase)

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["boxes"] = [asdict(b) for b in self.boxes]
        d["text"] = self.text
        return d


@dataclass(frozen=True)
class EditSkip:
    """A question with no sensible edit, and why."""

    qid: str
    reason: str


@dataclass
class PlanResult:
    plans: list[EditPlan] = field(default_factory=list)
    skipped: list[EditSkip] = field(default_factory=list)


class _Skip(Exception):
    """Raised inside the rules; becomes an EditSkip."""


# --- scene graphs -------------------------------------------------------------------------------


def load_scene_graphs(path: Path | None) -> dict[str, Any]:
    """GQA scene graphs keyed by image id ({} without a file)."""
    if path is None:
        return {}
    if not Path(path).is_file():
        raise VseamError(f"edit.text.scene_graphs: file not found: {path}", hint="point it at a GQA scene-graph JSON file")
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise VseamError(f"{path}: not valid JSON (line {e.lineno}): {e.msg}") from e
    if not isinstance(data, dict):
        raise VseamError(f"{path}: expected a mapping of image id → scene graph")
    return data


def _scene_of(q: Question, graphs: dict[str, Any]) -> dict[str, Any] | None:
    scene = q.extra.get("scene") or graphs.get(q.image_id)
    return scene if isinstance(scene, dict) and isinstance(scene.get("objects"), dict) else None


_ARG_ID = re.compile(r"^\s*(.*?)\s*\(([^()]*)\)\s*$")


def _program_ids(q: Question) -> dict[str, str]:
    """Object name → scene-graph id for each `select` / `relate` of the program that names one."""
    out: dict[str, str] = {}
    for op in q.extra.get("semantic") or []:
        arg = str(op.get("argument", ""))
        m = _ARG_ID.match(arg.split(",")[-1] if op.get("operation") != "select" else arg)
        if m and m.group(2) not in ("-", ""):
            name = m.group(1) if op.get("operation") == "select" else arg.split(",")[0]
            out.setdefault(_norm(name), m.group(2))
    return out


# --- rules --------------------------------------------------------------------------------------


def _norm(s: str) -> str:
    return re.sub(r"\s+", " ", s.strip().lower())


def _canonical(word: str) -> str:
    w = _norm(word)
    return SYNONYMS.get(w, w)


def _find_surface(text: str, phrases: Iterable[str]) -> tuple[str, str] | None:
    """(the words as written, the canonical phrase) of the longest vocabulary phrase, or synonym *of
    one of these phrases*, occurring as whole words in `text` ("underneath" → under; "bricks" is a
    material's synonym and no relation)."""
    phrases = list(phrases)
    canon = {_canonical(p) for p in phrases}
    forms = phrases + [k for k, v in SYNONYMS.items() if v in canon]
    found = [(len(p), p, _canonical(p)) for p in forms if re.search(rf"\b{re.escape(p)}\b", text)]
    if not found:
        return None
    _, surface, canonical = max(found)
    return surface, canonical


def _find_phrase(text: str, phrases: Iterable[str]) -> str | None:
    """The longest vocabulary phrase (or synonym) occurring as whole words in `text`, canonical."""
    found = _find_surface(text, phrases)
    return found[1] if found else None


def _choose(qid: str, options: list[str], seed: int) -> str:
    """A deterministic draw, so the same question always gets the same edit."""
    rng = random.Random(int.from_bytes(hashlib.sha256(f"{seed}:{qid}".encode()).digest()[:8], "big"))
    return rng.choice(sorted(options))


def _article(noun: str) -> str:
    return ("an " if noun[:1] in "aeiou" else "a ") + noun


class _Planner:
    def __init__(self, q: Question, vocab: dict[str, list[str]], graphs: dict[str, Any], seed: int) -> None:
        self.q, self.vocab, self.seed = q, vocab, seed
        self.text = _norm(q.question).rstrip("?").strip()
        self.scene = _scene_of(q, graphs)
        self.ids = _program_ids(q)

    # -- where ---------------------------------------------------------------------------------

    def box_of(self, noun: str) -> Box:
        """The named object's box: the scene graph's (by the program's object id), else the question's."""
        obj = self._scene_object(noun)
        if obj is not None:
            return Box(float(obj["x"]), float(obj["y"]), float(obj["w"]), float(obj["h"]))
        names = [_norm(o) for o in self.q.objects]
        for cand in (noun, noun.removesuffix("s"), noun + "s"):
            if cand in names and names.index(cand) < len(self.q.boxes):
                return self.q.boxes[names.index(cand)]
        if len(self.q.boxes) == 1 and len(self.q.objects) <= 1:
            return self.q.boxes[0]
        raise _Skip(f"no box for '{noun}' (the question gives no object_positions for it)")

    def _scene_object(self, noun: str) -> dict[str, Any] | None:
        if self.scene is None:
            return None
        objs = self.scene["objects"]
        oid = self.ids.get(noun)
        if oid in objs:
            return objs[oid]
        named = [o for o in objs.values() if _norm(str(o.get("name", ""))) == noun]
        return named[0] if len(named) == 1 else None

    # -- what ----------------------------------------------------------------------------------

    def category_vocab(self, category: str, word: str) -> list[str]:
        options = [w for w in self.vocab.get(category, []) if _canonical(w) != word]
        if not options:
            raise _Skip(f"no {category} vocabulary to replace '{word}' with (add one under edit.text.vocabularies)")
        return options

    def plan(self) -> EditPlan:
        q = self.q
        if q.level == "object":
            return self.object_swap()
        if q.level == "attribute":
            return self.attribute()
        return self.relation()

    def object_swap(self) -> EditPlan:
        q = self.q
        m = re.match(r"^(?:is|are) there (?:an? |any |some )?(.+?)(?: in (?:this|the) (?:picture|image|photo|imange))?$", self.text)
        if not m:
            raise _Skip("object level: only 'Is there a <object>…?' questions get an object swap")
        noun = m.group(1).strip()
        # The replacement comes from the asked object's own category, looked up from the word: a
        # release file's questions are not all about its category (Vehicle.json asks about windows,
        # and "window → wagon" is no object edit). A word in no vocabulary is skipped.
        category = _vocab_category(noun, self.vocab, OBJECT_LEVEL_CATEGORIES)
        if category is None:
            known = " / ".join(c for c in sorted(OBJECT_LEVEL_CATEGORIES) if c in self.vocab)
            raise _Skip(f"'{noun}' is in no object vocabulary ({known}): no replacement of its own kind to draw")
        if q.answer != YES:
            raise _Skip(f"answer is '{q.answer}': '{noun}' is not in the image, so there is nothing to repaint")
        if self.scene is not None:
            same = [o for o in self.scene["objects"].values() if _norm(str(o.get("name", ""))) == noun]
            if len(same) > 1:
                raise _Skip(f"{len(same)} '{noun}' objects in the scene graph: swapping one leaves the answer yes")
        options = [w for w in self.category_vocab(category, noun) if not same_kind(w, noun)]
        if not options:
            raise _Skip(f"no {category} word other than synonyms or sub-types of '{noun}' to replace it with")
        target = _choose(q.qid, options, self.seed)
        return self._make(category, noun, target, _article(noun), _article(target), (self.box_of(noun),), NO, noun)

    def attribute(self) -> EditPlan:
        q = self.q
        category = q.category if q.category in ("color", "material") else None
        if category is None:
            raise _Skip(f"attribute category '{q.category}' has no edit (only color and material)")
        noun = self._attribute_noun()
        box = self.box_of(noun)
        values = self.vocab.get(category, []) + RECOGNISED_ONLY.get(category, [])
        actual = self._actual_attribute(noun, values)
        rest = self.text.replace(noun, " ")
        asked = _find_phrase(rest, values)
        shade = re.search(rf"\b({'|'.join(COLOR_SHADES)})(?: ({'|'.join(map(re.escape, values))}))?\b", rest) if category == "color" else None
        if shade and shade.group(2) is None and (asked is None or q.answer in (YES, NO)):
            raise _Skip(f"'{shade.group(1)}' is a shade, not a colour: no definite colour to change it to or from")
        if shade and asked is not None and shade.group(2) is not None and _canonical(shade.group(2)) == asked:
            asked = f"{shade.group(1)} {asked}"  # "dark blue" is one value: swap all of it
        two = re.search(r"\b(\w+) or (\w+)\b", self.text)
        if two and _canonical(two.group(1)) in values and _canonical(two.group(2)) in values:
            a, b = _canonical(two.group(1)), _canonical(two.group(2))
            if q.answer not in (a, b):
                raise _Skip(f"answer '{q.answer}' is neither '{a}' nor '{b}'")
            source, target = q.answer, b if q.answer == a else a
            expected = target
        elif asked is None and q.answer in (YES, NO):  # "Is the fence made of wire?": wire is unknown
            raise _Skip(f"'{self._asked_word(category, rest)}' is not a known {category} (add it under edit.text.vocabularies)")
        elif asked is None:  # an open question: "What color is the ring?"
            source = _canonical(q.answer)
            if source not in values:
                raise _Skip(f"answer '{q.answer}' is not a known {category}")
            target = _choose(q.qid, self.category_vocab(category, source), self.seed)
            expected = target
        elif q.answer == YES:
            base = asked.split()[-1]  # "dark blue" → another colour than blue
            source, target, expected = asked, _choose(q.qid, self.category_vocab(category, base), self.seed), NO
        elif q.answer == NO:
            if actual == asked:
                raise _Skip(f"answer is no, but the scene graph says the {noun} is {asked}")
            source, target, expected = actual or "", asked, YES
        else:
            raise _Skip(f"yes/no question answered '{q.answer}'")
        made_of = set(GQA_VOCABULARIES["material"] + RECOGNISED_ONLY["material"])
        # "table made of glass", but "striped ring" (a texture word is an adjective).
        phrase = lambda v: f"{noun} made of {v}" if category == "material" and v in made_of else f"{v} {noun}"  # noqa: E731
        return self._make(category, source, target, phrase(source) if source else noun, phrase(target), (box,), expected, asked or source)

    def _asked_word(self, category: str, rest: str) -> str:
        """The value a yes/no attribute question asks about, known or not: the program's
        `verify material: wire`, else the words after "made of" / the question's last word."""
        for op in reversed(self.q.extra.get("semantic") or []):
            if str(op.get("operation", "")) == f"verify {category}" and str(op.get("argument", "")).strip():
                return _norm(str(op["argument"]))
        m = re.search(r"\bmade (?:of|from) (.+)$", self.text) or re.search(r"(\w+)\s*$", rest)
        return m.group(1).strip() if m else "?"

    def _attribute_noun(self) -> str:
        ids = list(self.ids)
        for name in ids + [_norm(o) for o in self.q.objects]:
            if re.search(rf"\b{re.escape(name)}\b", self.text):
                return name
        m = re.match(r"^(?:is|are) (?:the |this |that )?(\w+)", self.text) or re.search(r"\bthe (\w+)$", self.text)
        if not m:
            raise _Skip("cannot tell which object the attribute question is about")
        return m.group(1)

    def _actual_attribute(self, noun: str, values: list[str]) -> str | None:
        obj = self._scene_object(noun)
        attrs = [_canonical(a) for a in (obj or {}).get("attributes", [])]
        found = [a for a in attrs if a in values]
        return found[0] if found else None

    def relation(self) -> EditPlan:
        q = self.q
        spatial = q.category == "spatial"
        vocab_key = "spatial" if spatial else ("link" if q.category == "link" else "action")
        phrases = self.vocab.get(vocab_key, []) + ([relation_of(q.extra.get("semantic") or []) or ""])
        found = _find_surface(self.text, [p for p in phrases if p] + list(ACTION_ALTERNATIVE) + list(SPATIAL_OPPOSITE))
        # The question's own words ("underneath") locate subject and object; the canonical form
        # ("under") picks the opposite.
        surface, rel = found if found else (None, None)
        m = re.match(rf"^(?:is|are) (?:the |a |an )?(.+?) {re.escape(surface)} (?:the |a |an )?(.+)$", self.text) if surface else None
        if rel is None or m is None:
            raise _Skip("relation: the question is not 'Is the <subject> <relation> the <object>?' with a known relation")
        subject, obj = m.group(1).strip(), m.group(2).strip()
        # The relation asked decides (a release's "action" file also holds "to the left of" questions).
        spatial = rel in SPATIAL_OPPOSITE if rel in SPATIAL_OPPOSITE or rel in ACTION_ALTERNATIVE else spatial
        table = SPATIAL_OPPOSITE if spatial else ACTION_ALTERNATIVE
        other = table.get(rel) if spatial else action_alternative(rel, obj)
        if q.answer == YES:
            if other is None:
                fits = "" if spatial or rel not in ACTION_ALTERNATIVE else f" that fits the {obj}"
                raise _Skip(f"no {'opposite' if spatial else 'alternative'} known for the relation '{rel}'{fits}")
            source, target, expected = rel, other, NO
        elif q.answer == NO:
            source, target, expected = other or "", rel, YES
        else:
            raise _Skip(f"yes/no question answered '{q.answer}'")
        a, b = self.box_of(subject), self.box_of(obj)
        # Spatial edits move the subject relative to the object: repaint the region spanning both.
        # Actions change the subject's pose: repaint the subject (and what it acts on).
        boxes = (_hull(a, b),) if spatial or q.category == "link" else (a, b)
        src = f"the {subject} {source} the {obj}" if source else f"the {subject} and the {obj}"
        return self._make(q.category, source, target, src, f"the {subject} {target} the {obj}", boxes, expected, rel)

    def _make(self, category: str, source: str, target: str, source_phrase: str, target_phrase: str,
              boxes: tuple[Box, ...], expected: str, asked: str) -> EditPlan:  # fmt: skip
        q = self.q
        cf = _swap_word(q.question, asked, target) if asked else q.question
        return EditPlan(
            qid=q.qid, level=q.level, category=category, source=source, target=target,
            source_phrase=source_phrase, target_phrase=target_phrase, boxes=boxes, question=q.question,
            original_answer=q.answer, expected_answer=expected, counterfactual_question=cf,
        )  # fmt: skip


def _swap_word(question: str, asked: str, target: str) -> str:
    """The question with the asked concept (in any of its surface forms) replaced by the target."""
    forms = [asked] + [k for k, v in SYNONYMS.items() if v == asked]
    for form in sorted(forms, key=len, reverse=True):
        pat = re.compile(rf"\b(?:(an?) )?{re.escape(form)}\b", re.IGNORECASE)
        if pat.search(question):
            return pat.sub(lambda m: (_article(target) if m.group(1) else target), question, count=1)
    return question


def _hull(a: Box, b: Box) -> Box:
    x0, y0 = min(a.x, b.x), min(a.y, b.y)
    x1, y1 = max(a.x + a.w, b.x + b.w), max(a.y + a.h, b.y + b.h)
    return Box(x0, y0, x1 - x0, y1 - y0)


def _vocab_category(word: str, vocab: dict[str, list[str]], among: Iterable[str]) -> str | None:
    for cat in sorted(among):
        words = vocab.get(cat, [])
        if word in words or word.removesuffix("s") in words or word.removesuffix("es") in words:
            return cat
    return None


def plan_edit(q: Question, *, vocabularies: dict[str, list[str]] | None = None,
              scene_graphs: dict[str, Any] | None = None, seed: int = 0) -> EditPlan | EditSkip:  # fmt: skip
    """The edit of one question, or why it has none."""
    if q.level == "object" and q.category in ("count", "number"):
        return EditSkip(q.qid, "counting questions: changing how many objects there are is not a concept edit")
    if q.category == "location":
        return EditSkip(q.qid, "location questions name a place, not an editable concept of an object")
    try:
        return _Planner(q, vocabularies_for(q, vocabularies), scene_graphs or {}, seed).plan()
    except _Skip as e:
        return EditSkip(q.qid, str(e))


def plan_edits(questions: Iterable[Question], *, vocabularies: dict[str, list[str]] | None = None,
               scene_graphs: dict[str, Any] | None = None, seed: int = 0,
               rewrite: Callable[[EditPlan], EditPlan] | None = None) -> PlanResult:  # fmt: skip
    """Plans for every question that has an edit, and the skipped ones with their reasons."""
    out = PlanResult()
    for q in questions:
        p = plan_edit(q, vocabularies=vocabularies, scene_graphs=scene_graphs, seed=seed)
        if isinstance(p, EditSkip):
            out.skipped.append(p)
        else:
            out.plans.append(rewrite(p) if rewrite is not None else p)
    return out


# --- the optional rewriter ----------------------------------------------------------------------


def few_shot_prompt(plan: EditPlan, examples: dict[str, Any]) -> str:
    """The original method's few-shot prompt for the plan's level (counterfactual_prompt_examples.json)."""
    level = (examples.get("semantic_perturbation") or {}).get(plan.level) or {}
    lines = [str(level.get("instruction", "Rewrite the question by changing one concept."))]
    for ex in level.get("examples") or []:
        lines.append(f"Original: {ex.get('original_question')}\nCounterfactual: {ex.get('counterfactual_question')}")
    lines.append(f"Original: {plan.question}\nCounterfactual:")
    return "\n\n".join(lines)


def apply_rewrite(plan: EditPlan, rewritten: str, vocab: dict[str, list[str]], rewriter: str) -> EditPlan:
    """Use a rewritten question only when it swaps the plan's asked concept for another word of the
    same vocabulary (so the edit stays checkable); otherwise the rule-based plan stands."""
    line = rewritten.strip().splitlines()[0].strip() if rewritten.strip() else ""
    orig, new = _norm(plan.question).rstrip("?").split(), _norm(line).rstrip("?").split()
    if not new or len(orig) != len(new):
        return plan
    diff = [(a, b) for a, b in zip(orig, new) if a != b]
    if len(diff) != 1 or plan.original_answer != YES or plan.expected_answer != NO:
        return plan  # only "yes" questions: their target is free; a "no" question's target is what it asks
    old, word = _canonical(diff[0][0]), _canonical(diff[0][1])
    if old != plan.source or word == plan.source or word not in vocab.get(plan.category, []):
        return plan
    return replace(
        plan, target=word, target_phrase=plan.target_phrase.replace(plan.target, word),
        counterfactual_question=line, rewritten_by=rewriter,
    )  # fmt: skip
