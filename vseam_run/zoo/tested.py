"""What the test suite checks per transformers family, for `vseam models` (tests/test_families.py,
tests/test_shortcuts.py). Each row says how the family was tested and with which tolerance; the
tests assert exactly these tolerances, so a row here is only as true as the suite is green."""

from __future__ import annotations

from typing import NamedTuple


class Tested(NamedTuple):
    family: str  # builder name in zoo/families.py, or the class tested directly
    route: str  # how the test model reached vseam
    result: str  # equal (with the tolerance) or refused (with the reason)


_EQUAL = "equal: exact == reference ≤ 1e-5, self-check ≤ 1e-4, scoring == model(**inputs) ≤ 1e-5"
_SAVED, _NEW, _MEMORY = "save_pretrained + hand-written entry", "save_pretrained + `vseam models new` entry", "in memory (processor needs torchvision)"

TESTED: dict[str, Tested] = {
    "LlavaForConditionalGeneration": Tested("llava", _SAVED, _EQUAL),
    "InstructBlipForConditionalGeneration": Tested("instructblip", _SAVED, _EQUAL),
    "PaliGemmaForConditionalGeneration": Tested("paligemma", _SAVED, _EQUAL),
    "LlavaNextForConditionalGeneration": Tested("llava_next", _SAVED, _EQUAL + "; mixed image sizes"),
    "Gemma3ForConditionalGeneration": Tested("gemma3", _SAVED, _EQUAL),
    "Idefics3ForConditionalGeneration": Tested("idefics3", _SAVED, _EQUAL),
    "Blip2ForConditionalGeneration": Tested("blip2_opt", _NEW, _EQUAL + "; shortcut last_mlp_tail off (raises on OPT)"),
    "AyaVisionForConditionalGeneration": Tested("aya_vision", _NEW, _EQUAL + "; Cohere2 logit_scale not applied by the wrapper"),
    "Qwen2VLForConditionalGeneration": Tested("qwen2_vl", _MEMORY, _EQUAL + "; mixed image sizes"),
    "Qwen2_5_VLForConditionalGeneration": Tested("qwen2_5_vl", _MEMORY, _EQUAL + "; mixed image sizes"),
    "Qwen3VLForConditionalGeneration": Tested("Qwen3VLForConditionalGeneration", "in memory, built from a config",
                                              "refused at load: DeepStack adds visual features inside the first layers"),
}


def tested_for(model_class: str) -> str:
    t = TESTED.get(model_class)
    return f"{t.result} ({t.route})" if t else "not tested by vseam"
