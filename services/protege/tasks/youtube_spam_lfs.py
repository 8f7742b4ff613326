"""Python LFs for youtube-spam: the four WRENCH ideas that are not keywords
(data/youtube/readme.txt). WRENCH used spaCy's NER and TextBlob; neither is a
dependency here, so names and sentiment come from small word lists that keep the
same idea (and roughly the same coverage and accuracy, see `protege lf report`).
The keyword and regex ideas are YAML rules in deploy/tasks.yaml.
"""

from __future__ import annotations

import itertools
import re

from protege.improver.labeling import labeling_function

TASK = "youtube-spam"
WORD = re.compile(r"[A-Za-z']+")

# The five videos of the YouTube Spam Collection and the people commenters name.
PEOPLE = {
    "psy",
    "katy",
    "perry",
    "eminem",
    "rihanna",
    "shakira",
    "lmfao",
    "redfoo",
    "skyler",
    "justin",
    "bieber",
    "taylor",
    "swift",
    "marshall",
    "mathers",
    "gangnam",
}
# Words TextBlob's lexicon scores at polarity 1.0 ("best", "perfect", ...).
VERY_POSITIVE = {"best", "perfect", "awesome", "excellent", "wonderful", "magnificent", "greatest"}
# Opinion words (TextBlob subjectivity >= 0.5 on their own).
SUBJECTIVE = VERY_POSITIVE | {
    "love",
    "loved",
    "like",
    "great",
    "good",
    "beautiful",
    "amazing",
    "nice",
    "cool",
    "favorite",
    "favourite",
    "hate",
    "bad",
    "funny",
    "cute",
    "sexy",
    "pretty",
    "wow",
    "lol",
    "epic",
    "sad",
    "happy",
    "stupid",
    "crazy",
    "fantastic",
    "incredible",
    "boring",
    "annoying",
    "gorgeous",
}


def _words(text: str) -> list[str]:
    return WORD.findall(text)


@labeling_function(task=TASK)
def short_comment(x):
    """Ham comments are often short, such as 'cool video!'."""
    return "HAM" if len(x.text.split()) < 5 else None


@labeling_function(task=TASK)
def has_person(x):
    """Ham comments mention specific people and are short (WRENCH: spaCy PERSON)."""
    words = _words(x.text)
    if len(words) >= 20:
        return None
    lowered = {w.lower() for w in words}
    if lowered & PEOPLE:
        return "HAM"
    # Two capitalized words in a row, not opening the comment: a name like "Katy Perry".
    for a, b in itertools.pairwise(words[1:]):
        if a[0].isupper() and b[0].isupper() and not a.isupper() and not b.isupper():
            return "HAM"
    return None


@labeling_function(task=TASK)
def very_positive(x):
    """Ham comments when polarity is very high (WRENCH: TextBlob polarity > 0.9)."""
    words = [w.lower() for w in _words(x.text)]
    return "HAM" if words and any(w in VERY_POSITIVE for w in words) and len(words) < 15 else None


@labeling_function(task=TASK)
def subjective(x):
    """Ham comments voice an opinion (WRENCH: TextBlob subjectivity >= 0.5)."""
    words = [w.lower() for w in _words(x.text)]
    return "HAM" if any(w in SUBJECTIVE for w in words) else None
