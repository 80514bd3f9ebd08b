"""Counterfactual edits: change exactly the concept a question asks about.

`procedural_edit` / `make_edits` make exact edits of toy-world questions by editing the
scene graph and re-rendering.
"""

from vseam_run.edit.procedural import EditResult, make_edits, procedural_edit

__all__ = ["EditResult", "make_edits", "procedural_edit"]
