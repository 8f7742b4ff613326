"""Paired tests on the same rows: the gate compares a candidate with what serves, the
labeling step compares labelers on the reviewed rows; both ask "is A right more often
than B on these rows?" and must answer it alike.

>>> import numpy as np
>>> mcnemar_exact_p(np.array([1, 1, 1, 1, 1, 1, 0]), np.array([0, 0, 0, 0, 0, 0, 1]))
0.0625
"""

from __future__ import annotations

from math import comb

import numpy as np


def mcnemar_exact_p(candidate_correct: np.ndarray, champion_correct: np.ndarray) -> float:
    """One-sided exact McNemar p-value for "the candidate is right more often".

    Only discordant pairs count: b = candidate right and champion wrong, c = the
    reverse; under H0 b ~ Binomial(b + c, 1/2); p = P(B >= b)."""
    cand, champ = np.asarray(candidate_correct, bool), np.asarray(champion_correct, bool)
    b = int(np.sum(cand & ~champ))
    c = int(np.sum(~cand & champ))
    n = b + c
    if n == 0:
        return 1.0
    return float(sum(comb(n, k) for k in range(b, n + 1)) / 2**n)
