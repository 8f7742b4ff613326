"""Labeling: the cheap, noisy sources of labels (rules, Python LFs, prompts to the FM,
reviewers' verdicts, models' answers), the label model that combines them, and the
analysis of what they do. LF authors import from here:

>>> from protege.improver.labeling import DataPoint, labeling_function
"""

from protege.improver.data.records import DataPoint, Review
from protege.improver.labeling.functions import (
    ABSTAIN,
    LabelingFunction,
    LabelMatrix,
    Vote,
    apply_lfs,
    labeling_function,
)

__all__ = [
    "ABSTAIN",
    "DataPoint",
    "LabelMatrix",
    "LabelingFunction",
    "Review",
    "Vote",
    "apply_lfs",
    "labeling_function",
]
