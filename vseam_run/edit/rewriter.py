"""The optional rewriter: a local text-generation model (a registry-style entry) rewrites each
question with the original method's few-shot examples. Its rewrite replaces the rule-based
target only when it swaps the asked concept for another word of the same vocabulary (see
`text.apply_rewrite`), so an edit never depends on free text nobody checked."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import torch

from vseam_run.data.base import Question
from vseam_run.edit.text import EditPlan, apply_rewrite, few_shot_prompt, vocabularies_for
from vseam_run.errors import VseamError
from vseam_run.spec import EditTextSpec

Generate = Callable[[str], str]


def load_examples(path: Path | None) -> dict[str, Any]:
    """The few-shot examples file ({} without one: the prompt then has the instruction only)."""
    if path is None:
        return {}
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise VseamError(f"edit.text.examples: cannot read {path}: {e}", hint="use the counterfactual_prompt_examples.json format") from e
    if not isinstance(data, dict):
        raise VseamError(f"edit.text.examples: {path} must hold a JSON object")
    return data


def model_generator(model: Any, tokenizer: Any, device: torch.device, max_new_tokens: int) -> Generate:
    """Greedy continuation of a prompt by a causal LM (only the new text is returned)."""

    @torch.no_grad()
    def generate(prompt: str) -> str:
        ids = tokenizer(prompt, return_tensors="pt").to(device)
        out = model.generate(**ids, max_new_tokens=max_new_tokens, do_sample=False,
                             pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id)  # fmt: skip
        return tokenizer.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)

    return generate


def make_rewrite(generate: Generate, examples: dict[str, Any], questions: dict[str, Question],
                 spec: EditTextSpec, label: str) -> Callable[[EditPlan], EditPlan]:  # fmt: skip
    """A plan → plan hook for `text.plan_edits(rewrite=...)`."""

    def rewrite(plan: EditPlan) -> EditPlan:
        vocab = vocabularies_for(questions[plan.qid], spec.vocabularies)
        return apply_rewrite(plan, generate(few_shot_prompt(plan, examples)), vocab, label)

    return rewrite
