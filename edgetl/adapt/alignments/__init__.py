"""Registry of the alignment losses of ``--mode domain-adapt``: ``--alignment NAME``.

Registered under the ``edgetl.alignments`` entry-point group (edgetl's own in pyproject.toml), so a
new method is one file with one class and one entry point. A method's ``loss`` takes the pooled
features of a labelled source batch and an unlabelled target batch, and the target batch's logits,
and returns a scalar tensor that training adds, times ``--alignment-weight``, to the cross-entropy.
Torch-free at import: the names are the choices of ``--alignment``.
"""

from __future__ import annotations

from typing import ClassVar

from edgetl._plugins import instance, registered

GROUP = "edgetl.alignments"
NONE = "none"  # AdaBN only: no loss during training


class Alignment:
    description: ClassVar[str] = ""

    def loss(self, source_features, target_features, target_logits):
        raise NotImplementedError


def alignments() -> tuple[str, ...]:
    """The names of every registered alignment loss, sorted."""
    return tuple(registered(GROUP, "alignment losses"))


def get_alignment(name: str) -> Alignment:
    return instance(GROUP, "alignment losses", "alignment", name)
