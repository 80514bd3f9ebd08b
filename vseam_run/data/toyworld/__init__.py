"""The built-in toy world: seeded scenes of coloured, textured shapes and questions about them.

A small VLM can learn it from scratch, and its scene graphs make exact counterfactual edits
possible (re-render the edited graph). Public pieces:

- `ToyWorldParams`, `generate`, `export_toyworld`, `ensure_toyworld`: the evaluation set,
  written in GQA's question and scene-graph formats.
- `sample_examples`: fast in-memory training examples.
- `answer`, `Target`, `Scene`, `render`: the world's answer function and renderer.
- `vocabulary`, `words`: every token of questions and answers, for word-level tokenizers.
"""

from vseam_run.data.toyworld.export import (
    GENERATOR_VERSION,
    ToyQuestion,
    ToySet,
    ToyWorldParams,
    ensure_toyworld,
    export_toyworld,
    generate,
)
from vseam_run.data.toyworld.questions import (
    CATEGORIES,
    CATEGORY_LEVEL,
    Target,
    ToyExample,
    answer,
    answer_vocabulary,
    question_text,
    sample_examples,
    vocabulary,
    words,
)
from vseam_run.data.toyworld.render import render, render_array
from vseam_run.data.toyworld.world import (
    COLORS,
    KIND_CATEGORY,
    KINDS,
    MATERIALS,
    SPATIAL_RELATIONS,
    LINK,
    Scene,
    ToyObject,
    scene_from_dict,
    scene_to_dict,
)

__all__ = [
    "CATEGORIES",
    "CATEGORY_LEVEL",
    "COLORS",
    "GENERATOR_VERSION",
    "KINDS",
    "KIND_CATEGORY",
    "LINK",
    "MATERIALS",
    "SPATIAL_RELATIONS",
    "Scene",
    "Target",
    "ToyExample",
    "ToyObject",
    "ToyQuestion",
    "ToySet",
    "ToyWorldParams",
    "answer",
    "answer_vocabulary",
    "ensure_toyworld",
    "export_toyworld",
    "generate",
    "question_text",
    "render",
    "render_array",
    "sample_examples",
    "scene_from_dict",
    "scene_to_dict",
    "vocabulary",
    "words",
]
