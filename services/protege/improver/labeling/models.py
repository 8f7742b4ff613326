"""Models' own answers as labeling functions.

- ``foundation_model`` votes the label the FM gave when it answered the request (or
  scored it in shadow), read from the prediction event: free, since it was already paid for.
- ``specialist_model`` is off by default (``labeling.specialist_votes``): the specialist
  was trained on these same LFs' labels, so its vote echoes them instead of adding an
  independent view (the label model assumes LFs err independently) and a successor
  trained on it would inherit its mistakes. Reviewers' verdicts on its answers already
  carry what it got right and wrong.
"""

from __future__ import annotations

from protege.improver.data.records import DataPoint
from protege.improver.labeling.functions import LabelingFunction, Vote
from protege.taskspec import TaskSpec


def foundation_vote(x: DataPoint) -> Vote:
    return x.foundation_label


def specialist_vote(x: DataPoint) -> Vote:
    return x.specialist_label


def model_lfs(task: TaskSpec) -> list[LabelingFunction]:
    lfs = []
    if task.labeling.foundation_votes:
        lfs.append(
            LabelingFunction(
                "foundation_model",
                foundation_vote,
                task=task.name,
                source="model",
                description="The served FM's answer.",
            )
        )
    if task.labeling.specialist_votes:
        lfs.append(
            LabelingFunction(
                "specialist_model",
                specialist_vote,
                task=task.name,
                source="model",
                description="The current specialist's answer.",
            )
        )
    return lfs
