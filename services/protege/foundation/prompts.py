"""Prompts and label verbalizations, shared by every backend so that all of them
ask the same question and score the same continuations."""

from __future__ import annotations

from protege.taskspec import PromptSpec, TaskSpec


def _labels_block(task: TaskSpec, prompt: PromptSpec) -> str:
    if not prompt.describe_labels:
        return "\n".join(f"- {label.words}" for label in task.labels)
    return "\n".join(f"- {label.words}: {label.description}" for label in task.labels)


def _examples_block(task: TaskSpec, prompt: PromptSpec) -> str:
    if not prompt.examples:
        return ""
    words = {label.name: label.words for label in task.labels}
    shots = "".join(
        prompt.template.split("{text}")[0].rsplit("\n", 1)[-1]  # the line's own lead-in
        + f"{text}\n{_answer_lead(prompt)} {words[label]}\n\n"
        for text, label in prompt.examples
    )
    return shots


def _answer_lead(prompt: PromptSpec) -> str:
    """The words after `{text}` on the template's last line, e.g. 'Label:'."""
    return prompt.template.rsplit("\n", 1)[-1].strip()


def render_prompt(task: TaskSpec, text: str, prompt: PromptSpec | None = None) -> str:
    """The prefix the FM continues; ends right before the label words."""
    prompt = prompt or task.prompt
    return (
        prompt.template.replace("{labels}", _labels_block(task, prompt))
        .replace("{examples}", _examples_block(task, prompt))
        .replace("{text}", " ".join(text.split()))
        .rstrip()
    )


def continuations(task: TaskSpec) -> list[str]:
    """What each label adds after the prompt: a space, then its words."""
    return [f" {label.words}" for label in task.labels]


def scored_sequences(
    task: TaskSpec, texts: list[str], prompt: PromptSpec | None = None
) -> tuple[list[str], list[str]]:
    """(prefixes, sequences): each text's prompt, and every prompt + label words, text
    by text: what backends that score whole sequences (vLLM, OpenAI) send."""
    prefixes = [render_prompt(task, text, prompt) for text in texts]
    return prefixes, [p + c for p in prefixes for c in continuations(task)]
