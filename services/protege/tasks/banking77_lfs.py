"""Python LFs for banking77: patterns that keyword rules cannot say (word order,
negation). The keyword rules are in deploy/tasks.yaml."""

from __future__ import annotations

import re

from protege.improver.labeling import labeling_function

TASK = "banking77"

CARD_NOT_ARRIVED = re.compile(
    r"\b(card|it)\b.{0,40}\b(not|n't|never|yet to)\b.{0,15}\b(arrived?|come|came|received?|delivered)\b"
    r"|\bwhere is my (new )?card\b|\bstill waiting (on|for) my (new )?card\b",
    re.IGNORECASE,
)
DECLINED_CARD = re.compile(
    r"\bcard\b.{0,30}\b(declined|rejected)\b|\b(declined|rejected)\b.{0,30}\bcard payment\b",
    re.IGNORECASE,
)
TRANSFER_NOT_RECEIVED = re.compile(
    r"\b(friend|recipient|he|she|they|landlord|mother|father|brother|sister)\b.{0,40}"
    r"\b(hasn't|has not|haven't|have not|didn't|did not|not)\b.{0,20}\b(received?|got|get)\b",
    re.IGNORECASE,
)


@labeling_function(task=TASK)
def card_not_arrived(x):
    """'My card still hasn't arrived', 'where is my card?'"""
    return "card_arrival" if CARD_NOT_ARRIVED.search(x.text) else None


@labeling_function(task=TASK)
def card_payment_declined(x):
    """A card payment was declined or rejected."""
    text = x.text.lower()
    if "transfer" in text or "withdraw" in text or "top" in text:
        return None
    return "declined_card_payment" if DECLINED_CARD.search(x.text) else None


@labeling_function(task=TASK)
def recipient_did_not_get_transfer(x):
    """Someone I sent money to says it has not arrived."""
    return "transfer_not_received_by_recipient" if TRANSFER_NOT_RECEIVED.search(x.text) else None
