"""Declarative labeling functions from a task's YAML: keyword and regex rules.

A keyword matches as a whole word or phrase (``"top up"`` matches "Top  up?" but not
"stop upgrading"); a regex matches anywhere (``re.search``). Both ignore case unless
the rule sets ``case_sensitive``.

Example
-------
>>> from protege.taskspec import RuleSpec
>>> lf = RuleLF(RuleSpec(name="subscribe", label="SPAM", keywords=["subscribe", "sub 4 sub"]))
>>> from protege.improver.labeling import DataPoint
>>> lf(DataPoint("Please SUBSCRIBE!")), lf(DataPoint("unsubscribed"))
('SPAM', None)
"""

from __future__ import annotations

import re

from protege.improver.data.records import DataPoint
from protege.improver.labeling.functions import LabelingFunction, Vote
from protege.taskspec import RuleSpec, TaskSpec


def keyword_pattern(keywords: list[str], case_sensitive: bool = False) -> re.Pattern[str]:
    """One regex for a list of keywords: whole words, any run of spaces between words."""
    alternatives = sorted(
        (r"\s+".join(re.escape(word) for word in keyword.split()) for keyword in keywords),
        key=len,
        reverse=True,
    )
    flags = 0 if case_sensitive else re.IGNORECASE
    return re.compile(r"(?<!\w)(?:" + "|".join(alternatives) + r")(?!\w)", flags)


class RuleLF(LabelingFunction):
    """Votes the rule's label when its keywords or regex match; abstains otherwise."""

    source = "rule"

    def __init__(self, spec: RuleSpec, task: str | None = None):
        what = f"keywords {spec.keywords}" if spec.keywords else f"regex {spec.regex!r}"
        super().__init__(spec.name, self.match, task=task, description=f"{spec.label} when {what}")
        self.spec = spec
        flags = 0 if spec.case_sensitive else re.IGNORECASE
        self.pattern = (
            keyword_pattern(spec.keywords, spec.case_sensitive)
            if spec.keywords
            else re.compile(spec.regex or "", flags)
        )

    def match(self, x: DataPoint) -> Vote:
        return self.spec.label if self.pattern.search(x.text) else None


def rule_lfs(task: TaskSpec) -> list[LabelingFunction]:
    """The task's keyword and regex rules, in config order."""
    return [RuleLF(spec, task=task.name) for spec in task.labeling.rules]
