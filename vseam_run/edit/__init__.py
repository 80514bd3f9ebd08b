"""Counterfactual edits: change exactly the concept a question asks about.

`procedural_edit` / `make_edits` make exact edits of toy-world questions by editing the
scene graph and re-rendering. For real photos: `text` writes the edit from the question,
`masks` makes the mask (boxes or SAM), `inpaint` repaints it with diffusers and pastes it back,
`checks` proves it (pixels outside the mask, a CLIP concept check), and `engine` computes each
edit once under a content hash. The stage that runs them is `vseam_run.stages.edit`.
"""

from vseam_run.edit.procedural import EditResult, make_edits, procedural_edit

__all__ = ["EditResult", "make_edits", "procedural_edit"]
