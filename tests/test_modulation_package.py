"""The modulation package's protocol: every policy is registered, an intervention installs its
hooks and removes them, and it survives serialisation (ledger JSON and safetensors file) exactly."""

from __future__ import annotations

import pytest
import torch

from tests.conftest import load_vlm
from vseam_run import modulation
from vseam_run.modulation import ScaleIntervention, load_file, save_file, state_from_saved, state_to_saved


def test_every_policy_of_the_spec_union_has_a_module():
    from typing import get_args

    from vseam_run.spec import ModulationSpec

    union = get_args(get_args(ModulationSpec)[0])
    names = {cls.model_fields["policy"].default for cls in union}
    assert names <= set(modulation.POLICIES), names - set(modulation.POLICIES)


def _scales() -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return (torch.rand(3, 4, generator=g) * 2).to(torch.float32)


def test_scale_intervention_round_trips_through_the_ledger_and_a_file(tmp_path):
    iv = ScaleIntervention(_scales())
    back = state_from_saved(state_to_saved(iv))
    assert isinstance(back, ScaleIntervention) and torch.equal(back.scales, iv.scales)
    # A ledger written before interventions had kinds held the bare matrix.
    legacy = state_from_saved(iv.scales.tolist())
    assert torch.equal(legacy.scales, iv.scales)
    path = save_file(iv, tmp_path / "m.safetensors", {"run": "abc", "model": {"name": "tiny"}})
    loaded, header = load_file(path)
    assert loaded.kind == "scales" and torch.equal(loaded.scales, iv.scales)
    assert header["run"] == "abc" and header["model"] == '{"name": "tiny"}'


def test_unknown_kind_and_foreign_file_are_refused(tmp_path):
    from safetensors.torch import save_file as st_save

    with pytest.raises(ValueError, match="unknown intervention kind 'nope'"):
        modulation.from_state(modulation.State({}, {"kind": "nope"}))
    st_save({"x": torch.ones(2)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(ValueError, match="not a vseam modulation file"):
        load_file(tmp_path / "other.safetensors")


def test_installed_hooks_change_the_answer_and_are_removed(tiny_llava_entry, toy_examples):
    vlm = load_vlm(tiny_llava_entry)
    prep = vlm.prepare(vlm.encode([e.image for e in toy_examples], [e.question for e in toy_examples]))
    base = vlm.last_logits(prep)
    iv = ScaleIntervention(_scales())
    with iv.installed(vlm):
        moved = vlm.last_logits(prep)
    assert not torch.allclose(base, moved)
    assert torch.equal(vlm.last_logits(prep), base)  # hooks gone
    # An intervention raising inside the block still removes its hooks.
    with pytest.raises(RuntimeError), iv.installed(vlm):
        raise RuntimeError("boom")
    assert torch.equal(vlm.last_logits(prep), base)
    assert ScaleIntervention(torch.ones(3, 4)).is_identity() and not iv.is_identity()
