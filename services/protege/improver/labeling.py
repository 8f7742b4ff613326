"""Labeling functions: named callables that vote a label or abstain, and the applier
that turns a list of them into a label matrix.

An LF sees a :class:`DataPoint` (the text and what the event log knows about it) and
returns a label name, or ``None`` to abstain. In the label matrix a vote is the
label's index in the task and an abstain is ``ABSTAIN`` (-1), as in Snorkel.

Fault tolerance is an option of the LF, on by default: an LF that raises abstains on
that example, the error is counted on the LF and logged, and the run goes on.

Example
-------
>>> from protege.improver.labeling import DataPoint, LFApplier, labeling_function
>>> @labeling_function(task="youtube-spam", name="asks_to_subscribe")
... def asks_to_subscribe(x):
...     '''Spam asks viewers to subscribe to another channel.'''
...     return "SPAM" if "subscribe" in x.text.lower() else None
>>> matrix = LFApplier([asks_to_subscribe], ["HAM", "SPAM"]).apply(
...     [DataPoint("Subscribe to me!"), DataPoint("great song")])
>>> matrix.L.tolist()
[[1], [-1]]
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

log = logging.getLogger(__name__)

ABSTAIN = -1
# Tracebacks logged per LF per apply; the rest are only counted (an LF failing on every
# example of a 10k-example run must not flood the log).
LOGGED_ERRORS_PER_LF = 3


@dataclass(frozen=True)
class Review:
    """One reviewer's latest verdict on one prediction."""

    reviewer: str
    verdict: str  # "up" | "down"
    predicted: str | None  # the label the reviewed prediction served
    label: str | None = None  # the correction, when the reviewer gave one
    timestamp: float = 0.0


@dataclass(frozen=True)
class DataPoint:
    """What a labeling function sees: a text and what the event log knows about it."""

    text: str
    uid: str | None = None
    served_label: str | None = None
    foundation_label: str | None = None
    foundation_confidence: float | None = None
    specialist_label: str | None = None
    specialist_confidence: float | None = None
    reviews: tuple[Review, ...] = ()
    extra: dict = field(default_factory=dict, compare=False)


Vote = str | None


class LabelingFunction:
    """A named function from a :class:`DataPoint` to a label name or ``None`` (abstain).

    Parameters
    ----------
    name : unique within the task; shown in reports.
    f : the voting function.
    task : the task it belongs to; ``None`` lets any task that imports it use it.
    source : ``python``, ``rule``, ``prompt``, ``feedback`` or ``model``.
    fault_tolerant : when on (the default) an exception is an abstain, counted in
        ``errors`` and logged; when off it propagates.
    """

    source = "python"

    def __init__(
        self,
        name: str,
        f: Callable[[DataPoint], Vote] | None = None,
        *,
        task: str | None = None,
        source: str | None = None,
        description: str | None = None,
        fault_tolerant: bool = True,
    ) -> None:
        self.name = name
        self._f = f
        self.task = task
        if source is not None:
            self.source = source
        self.description = description or ((f.__doc__ or "").strip().split("\n")[0] if f else "")
        self.fault_tolerant = fault_tolerant
        self.errors = 0

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, source={self.source!r})"

    def __call__(self, x: DataPoint) -> Vote:
        """The raw vote: exceptions propagate."""
        if self._f is None:
            raise NotImplementedError(f"{type(self).__name__} must define __call__ or pass f")
        return self._f(x)

    def apply(self, points: Sequence[DataPoint]) -> list[Vote]:
        """Votes on many points; batch LFs (prompts) override this."""
        logged = 0
        votes: list[Vote] = []
        for x in points:
            try:
                votes.append(self(x))
            except Exception:
                if not self.fault_tolerant:
                    raise
                self.errors += 1
                if logged < LOGGED_ERRORS_PER_LF:
                    logged += 1
                    log.warning(
                        "LF %s raised on %r; abstaining", self.name, x.text[:80], exc_info=True
                    )
                votes.append(None)
        return votes


def labeling_function(
    f: Callable[[DataPoint], Vote] | None = None,
    *,
    name: str | None = None,
    task: str | None = None,
    fault_tolerant: bool = True,
):
    """Decorator: turn a plain function into a :class:`LabelingFunction`.

    Use it bare (``@labeling_function``) or with options
    (``@labeling_function(task="youtube-spam", name="asks_to_subscribe")``); the
    function's name and docstring are the defaults for the LF's name and description.
    """

    def wrap(fn: Callable[[DataPoint], Vote]) -> LabelingFunction:
        return LabelingFunction(
            name or fn.__name__, fn, task=task, source="python", fault_tolerant=fault_tolerant
        )

    return wrap(f) if f is not None else wrap


def lfs_from_modules(modules: Sequence[str], task: str | None = None) -> list[LabelingFunction]:
    """The LFs defined at the top level of each module, for `task` (or for any task).

    A module that cannot be imported is a configuration error and raises, naming it.
    """
    found: list[LabelingFunction] = []
    for module_name in modules:
        try:
            module = importlib.import_module(module_name)
        except Exception as exc:
            raise ValueError(
                f"cannot import labeling functions module {module_name!r}: {exc}"
            ) from exc
        for value in vars(module).values():
            if isinstance(value, LabelingFunction) and value.task in (None, task):
                found.append(value)
    return found


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


class LFApplier:
    """Applies labeling functions to data points, giving a :class:`LabelMatrix`.

    A vote for a label the task does not have is an error of that LF (it abstains).
    """

    def __init__(self, lfs: Sequence[LabelingFunction], label_names: Sequence[str]):
        names = [lf.name for lf in lfs]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"duplicate labeling function names: {duplicates}")
        self.lfs = list(lfs)
        self.label_names = list(label_names)
        self._index = {name: i for i, name in enumerate(self.label_names)}

    def apply(self, points: Sequence[DataPoint]) -> LabelMatrix:
        L = np.full((len(points), len(self.lfs)), ABSTAIN, dtype=np.int64)
        errors: dict[str, int] = {}
        for j, lf in enumerate(self.lfs):
            before = lf.errors
            try:
                votes = lf.apply(points)
            except Exception:
                # A batch LF whose whole batch failed: every point abstains.
                if not lf.fault_tolerant:
                    raise
                log.warning("LF %s failed on the whole batch; abstaining", lf.name, exc_info=True)
                lf.errors += len(points)
                votes = [None] * len(points)
            unknown = 0
            for i, vote in enumerate(votes):
                if vote is None or vote == ABSTAIN:
                    continue
                index = self._index.get(vote)
                if index is None:
                    unknown += 1
                    continue
                L[i, j] = index
            if unknown:
                lf.errors += unknown
                log.warning(
                    "LF %s voted %d times for labels the task does not have", lf.name, unknown
                )
            errors[lf.name] = lf.errors - before
        if any(errors.values()):
            log.warning("LF errors (abstained): %s", {k: v for k, v in errors.items() if v})
        return LabelMatrix(
            L=L,
            lf_names=[lf.name for lf in self.lfs],
            sources=[lf.source for lf in self.lfs],
            label_names=self.label_names,
            errors=errors,
        )
