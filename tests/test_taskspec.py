"""The task spec language and the settings are validated before anything starts; a bad
file gets one line per problem naming the file, the task and the field."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from protege.settings import SettingsError, load_settings
from protege.stack import LocalStack
from protege.taskspec import DEFAULT_TASKS_FILE, TasksFileError, load_tasks

SHIPPED = DEFAULT_TASKS_FILE.read_text(encoding="utf-8")
HAM_BLOCK = """      - name: HAM
        description: A genuine comment about the video, its music or the people in it.
        verbalizer: ham"""


def tasks_file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "tasks.yaml"
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture
def unquoted_comma(tmp_path) -> Path:
    """A label written as a flow mapping whose description has an unquoted comma."""
    assert HAM_BLOCK in SHIPPED
    flow = (
        "      - {name: HAM, description: A genuine comment about the video, "
        "its music or the people in it., verbalizer: ham}"
    )
    return tasks_file(tmp_path, SHIPPED.replace(HAM_BLOCK, flow))


def protege(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "protege.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **(env or {})},
    )


def test_the_shipped_tasks_file_is_valid():
    assert set(load_tasks(DEFAULT_TASKS_FILE)) == {"youtube-spam", "banking77", "review-sentiment"}


def test_an_unquoted_comma_names_the_file_the_task_and_the_field(unquoted_comma):
    with pytest.raises(TasksFileError) as info:
        load_tasks(unquoted_comma)
    (line,) = str(info.value).splitlines()
    assert line.startswith(f"{unquoted_comma}: task 'youtube-spam': labels[0].")
    assert "unknown field" in line


def test_every_problem_gets_its_own_line(tmp_path):
    text = SHIPPED.replace("threshold: 0.8", "threshold: 1.8", 1).replace(
        "max_batch: 64", "max_batch: many", 1
    )
    with pytest.raises(TasksFileError) as info:
        load_tasks(tasks_file(tmp_path, text))
    lines = str(info.value).splitlines()
    assert len(lines) == 2
    assert any("task 'youtube-spam': routing.threshold: " in line for line in lines)
    assert any("task 'youtube-spam': limits.max_batch: " in line for line in lines)


def test_broken_yaml_names_the_line_and_column(tmp_path):
    with pytest.raises(TasksFileError, match=r"tasks.yaml:3:\d+: not valid YAML"):
        load_tasks(tasks_file(tmp_path, "tasks:\n  - name: x\n  - : [\n"))


def test_a_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(TasksFileError, match="tasks file not found"):
        load_tasks(tmp_path / "nope.yaml")


def test_a_bad_setting_names_its_variable(monkeypatch):
    monkeypatch.setenv("PROTEGE_HTTP_PORT", "eighty")
    with pytest.raises(SettingsError, match="PROTEGE_HTTP_PORT: "):
        load_settings()


def test_tasks_check_reports_without_a_traceback(unquoted_comma):
    bad = protege("tasks", "check", str(unquoted_comma))
    assert bad.returncode == 2
    assert bad.stderr.startswith(f"error: {unquoted_comma}: task 'youtube-spam': labels[0].")
    assert "Traceback" not in bad.stderr
    good = protege("tasks", "check", str(DEFAULT_TASKS_FILE))
    assert good.returncode == 0 and "3 task(s), valid" in good.stdout


def test_up_with_a_bad_tasks_file_starts_nothing_and_says_why(unquoted_comma, tmp_path):
    stack = LocalStack(load_settings(home=tmp_path, tasks_file=unquoted_comma))
    with pytest.raises(TasksFileError):
        stack.start()
    assert stack.broker is None and stack.url is None and not stack.pids

    up = protege(
        "up", env={"PROTEGE_TASKS_FILE": str(unquoted_comma), "PROTEGE_HOME": str(tmp_path)}
    )
    assert up.returncode == 2 and "Traceback" not in up.stderr
    assert f"{unquoted_comma}: task 'youtube-spam'" in up.stderr
    assert "broker" not in up.stdout  # nothing was started


def test_up_with_a_bad_setting_says_which(tmp_path):
    up = protege("up", env={"PROTEGE_HTTP_PORT": "eighty", "PROTEGE_HOME": str(tmp_path)})
    assert up.returncode == 2 and "Traceback" not in up.stderr
    assert "PROTEGE_HTTP_PORT" in up.stderr


def test_inline_tasks_replace_the_file_and_name_their_variable(monkeypatch, tmp_path):
    monkeypatch.setenv("PROTEGE_TASKS_FILE", str(tmp_path / "absent.yaml"))
    monkeypatch.setenv("PROTEGE_TASKS_INLINE", SHIPPED)
    assert load_settings().load_tasks() == load_tasks(DEFAULT_TASKS_FILE)

    monkeypatch.setenv("PROTEGE_TASKS_INLINE", SHIPPED.replace("max_batch: 64", "max_batch: x", 1))
    with pytest.raises(TasksFileError) as info:
        load_settings().load_tasks()
    (line,) = str(info.value).splitlines()
    assert line.startswith("PROTEGE_TASKS_INLINE: task 'youtube-spam': limits.max_batch: ")

    monkeypatch.setenv("PROTEGE_TASKS_INLINE", "tasks:\n  - name: x\n  - : [\n")
    with pytest.raises(TasksFileError, match=r"^PROTEGE_TASKS_INLINE:3:\d+: not valid YAML"):
        load_settings().load_tasks()


def test_tasks_check_checks_the_inline_tasks(unquoted_comma):
    bad = protege("tasks", "check", env={"PROTEGE_TASKS_INLINE": unquoted_comma.read_text()})
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert bad.stderr.startswith("error: PROTEGE_TASKS_INLINE: task 'youtube-spam': labels[0].")
    good = protege("tasks", "check", env={"PROTEGE_TASKS_INLINE": SHIPPED})
    assert good.returncode == 0 and "PROTEGE_TASKS_INLINE: 3 task(s), valid" in good.stdout
