"""Labeling functions: Snorkel's, voting label *names* for one task.

A labeling function (LF) sees a :class:`DataPoint` (the text and what the event log
knows about it) and returns a label name, or ``None`` to abstain. It is a
``snorkel.labeling.LabelingFunction`` (preprocessors and resources work as in
Snorkel) that also knows its task, the kind of source it is, and whether it is
fault tolerant: a fault-tolerant LF that raises abstains on that example, the error
is counted on the LF and logged, and the run goes on.

:func:`apply_lfs` runs Snorkel's ``LFApplier`` and returns a :class:`LabelMatrix`:
``L[i, j]`` is the index of the label LF ``j`` voted on point ``i``, ``-1`` an abstain.
LFs that work in batches (prompts to the FM) do that work in :meth:`LabelingFunction.prepare`,
which the applier calls first, and then vote one point at a time like any other.

Example
-------
>>> from protege.improver.labeling import DataPoint, apply_lfs, labeling_function
>>> @labeling_function(task="youtube-spam", name="asks_to_subscribe")
... def asks_to_subscribe(x):
...     '''Spam asks viewers to subscribe to another channel.'''
...     return "SPAM" if "subscribe" in x.text.lower() else None
>>> apply_lfs([asks_to_subscribe], ["HAM", "SPAM"],
...           [DataPoint("Subscribe to me!"), DataPoint("great song")]).L.tolist()
[[1], [-1]]
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import snorkel.labeling

from protege.improver.data.records import DataPoint

log = logging.getLogger(__name__)

ABSTAIN = -1
# Tracebacks logged per LF per apply; the rest are only counted (an LF failing on every
# example of a 10k-example run must not flood the log).
LOGGED_ERRORS_PER_LF = 3

Vote = str | None
SOURCES = ("rule", "python", "prompt", "embedding", "feedback", "model")


class LabelingFunction(snorkel.labeling.LabelingFunction):
    """A named function from a :class:`DataPoint` to a label name or ``None`` (abstain).

    Parameters
    ----------
    name : unique within the task; shown in reports.
    f : the voting function; subclasses pass their own method.
    task : the task it belongs to; ``None`` lets any task that imports it use it.
    source : one of ``SOURCES``.
    description : one line for reports; defaults to the first line of `f`'s docstring.
    fault_tolerant : when on (the default) an exception is an abstain, counted in
        ``errors`` and logged; when off it propagates.
    resources, pre : as in Snorkel.
    """

    source = "python"

    def __init__(
        self,
        name: str,
        f: Callable[..., Vote],
        *,
        task: str | None = None,
        source: str | None = None,
        description: str | None = None,
        fault_tolerant: bool = True,
        resources: dict | None = None,
        pre: list | None = None,
    ) -> None:
        super().__init__(name, f, resources=resources, pre=pre)
        self.task = task
        if source is not None:
            self.source = source
        if self.source not in SOURCES:
            raise ValueError(f"LF {name!r}: unknown source {self.source!r}; use one of {SOURCES}")
        self.description = description or (f.__doc__ or "").strip().split("\n")[0]
        self.fault_tolerant = fault_tolerant
        self.errors = 0

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, source={self.source!r})"

    def prepare(self, points: Sequence[DataPoint]) -> None:
        """Batch work before the votes on `points` are asked one by one (none by default)."""

    def by_index(self, label_names: Sequence[str]) -> snorkel.labeling.LabelingFunction:
        """This LF as Snorkel's applier wants it: label indices, -1 to abstain. Errors
        (an exception, a label the task does not have) abstain when fault tolerant."""
        index = {name: i for i, name in enumerate(label_names)}
        logged = 0

        def error(x: DataPoint, problem: str, exc_info: bool = False) -> int:
            nonlocal logged
            self.errors += 1
            if logged < LOGGED_ERRORS_PER_LF:
                logged += 1
                log.warning(
                    "LF %s %s on %r; abstaining",
                    self.name,
                    problem,
                    x.text[:80],
                    exc_info=exc_info,
                )
            return ABSTAIN

        def vote_index(x: DataPoint) -> int:
            try:
                vote = self(x)
            except Exception:
                if not self.fault_tolerant:
                    raise
                return error(x, "raised", exc_info=True)
            if vote is None:
                return ABSTAIN
            if vote not in index:
                return error(x, f"voted {vote!r}, not a label of the task")
            return index[vote]

        return snorkel.labeling.LabelingFunction(self.name, vote_index)


def labeling_function(
    f: Callable[[DataPoint], Vote] | None = None,
    *,
    name: str | None = None,
    task: str | None = None,
    fault_tolerant: bool = True,
    resources: dict | None = None,
    pre: list | None = None,
):
    """Decorator: turn a plain function into a :class:`LabelingFunction`.

    Use it bare (``@labeling_function``) or with options
    (``@labeling_function(task="youtube-spam", name="asks_to_subscribe")``); the
    function's name and docstring are the defaults for the LF's name and description.
    """

    def wrap(fn: Callable[[DataPoint], Vote]) -> LabelingFunction:
        return LabelingFunction(
            name or fn.__name__,
            fn,
            task=task,
            source="python",
            fault_tolerant=fault_tolerant,
            resources=resources,
            pre=pre,
        )

    return wrap(f) if f is not None else wrap


@dataclass
class LabelMatrix:
    """Votes of M labeling functions on N points: ``L[i, j]`` is a label index or -1."""

    L: np.ndarray
    lf_names: list[str]
    sources: list[str]
    label_names: list[str]
    errors: dict[str, int]

    @property
    def covered(self) -> np.ndarray:
        return (self.L != ABSTAIN).any(axis=1) if self.L.size else np.zeros(len(self.L), bool)

    def columns(self, sources: Sequence[str]) -> LabelMatrix:
        """The same votes, keeping only LFs from `sources`."""
        keep = [j for j, s in enumerate(self.sources) if s in sources]
        return LabelMatrix(
            L=self.L[:, keep],
            lf_names=[self.lf_names[j] for j in keep],
            sources=[self.sources[j] for j in keep],
            label_names=self.label_names,
            errors={self.lf_names[j]: self.errors.get(self.lf_names[j], 0) for j in keep},
        )


def apply_lfs(
    lfs: Sequence[LabelingFunction],
    label_names: Sequence[str],
    points: Sequence[DataPoint],
    *,
    progress: bool = False,
) -> LabelMatrix:
    """Each LF's vote on each point, through Snorkel's ``LFApplier``; `errors` counts
    the abstains forced by errors in this call, per LF."""
    names = [lf.name for lf in lfs]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"duplicate labeling function names: {duplicates}")
    before = {lf.name: lf.errors for lf in lfs}
    for lf in lfs:
        try:
            lf.prepare(points)
        except Exception:
            if not lf.fault_tolerant:
                raise
            log.warning(
                "LF %s failed to prepare its batch; it abstains where it must",
                lf.name,
                exc_info=True,
            )
    if lfs and points:
        applier = snorkel.labeling.LFApplier([lf.by_index(label_names) for lf in lfs])
        L = np.asarray(applier.apply(list(points), progress_bar=progress), dtype=np.int64)
    else:
        L = np.full((len(points), len(lfs)), ABSTAIN, dtype=np.int64)
    errors = {lf.name: lf.errors - before[lf.name] for lf in lfs}
    if any(errors.values()):
        log.warning("LF errors (abstained): %s", {k: v for k, v in errors.items() if v})
    return LabelMatrix(L, names, [lf.source for lf in lfs], list(label_names), errors)
