"""`protege lf report`, `protege errors` and `protege gold import` on both shipped tasks,
against a store seeded with simulated traffic and reviews."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml

from protege import datasets
from protege.cli import main
from protege.improver.data.store import ExampleStore
from protege.improver.labeling.prompts import prompt_key
from protege.improver.labeling.sources import default_model_name
from protege.schemas import (
    FeedbackEvent,
    LabelProbability,
    ModelOutput,
    ModelRef,
    PredictionEvent,
    Route,
)
from protege.taskspec import DEFAULT_TASKS_FILE, load_tasks


def seed_store(url: str, task: str, split: str, n: int, seed: int = 0) -> list[str]:
    """n predictions of `task` served by a 70 %-right specialist, the FM answering the
    first label (as weak as the CPU FM), reviewers on a third of them."""
    ds = datasets.load(task, split)
    rng = np.random.default_rng(seed)
    rows = rng.choice(len(ds), size=n, replace=False)
    names = ds.label_names
    events = []
    for k, i in enumerate(rows):
        truth = ds.labels[i]
        served = truth if rng.random() < 0.7 else str(rng.choice([x for x in names if x != truth]))
        probs = [LabelProbability(label=served, probability=0.8)]
        fm = ModelOutput(
            model=ModelRef(model="fm", version="1"), label=names[0], probabilities=probs
        )
        pid = f"{task}-{k}"
        events.append(
            PredictionEvent(
                prediction_id=pid,
                task=task,
                text=ds.texts[i],
                label=served,
                probabilities=probs,
                route=Route.specialist,
                served_by=ModelRef(model="tfidf", version="1"),
                foundation=fm,
                latency_ms=1.0,
                timestamp=float(k),
            )
        )
        if k % 3 == 0:
            ok = served == truth
            events.append(
                FeedbackEvent(
                    prediction_id=pid,
                    task=task,
                    verdict="up" if ok else "down",
                    label=None if ok else truth,
                    reviewer="ann",
                    timestamp=float(k) + 0.5,
                )
            )
    store = ExampleStore(url)
    store.record_many(events)
    store.close()
    return [ds.texts[i] for i in rows]


@pytest.fixture(scope="module")
def tasks_file(tmp_path_factory):
    """The shipped tasks with a short label-model fit: these tests check the commands,
    not the model (77 labels x 20 LFs cost ~0.5 s per epoch on 2 cores)."""
    raw = yaml.safe_load(DEFAULT_TASKS_FILE.read_text())
    for task in raw["tasks"]:
        epochs = 5 if len(task["labels"]) > 2 else 50
        task.setdefault("labeling", {}).setdefault("label_model", {})["epochs"] = epochs
    path = tmp_path_factory.mktemp("tasks") / "tasks.yaml"
    path.write_text(yaml.safe_dump(raw))
    return str(path)


@pytest.fixture(scope="module")
def seeded(tmp_path_factory):
    url = f"sqlite:///{tmp_path_factory.mktemp('store') / 'store.db'}"
    texts = {
        "youtube-spam": seed_store(url, "youtube-spam", "valid", 90),
        "banking77": seed_store(url, "banking77", "test", 150),
    }
    return url, texts


NO_PROMPTS = "rule,python,feedback,model"


def run(capsys, *argv: str) -> str:
    assert main(list(argv)) == 0
    return capsys.readouterr().out


@pytest.mark.parametrize("task", ["youtube-spam", "banking77"])
def test_lf_report_json_has_every_lf_with_coverage_conflicts_and_gold_accuracy(
    capsys, seeded, tasks_file, task
):
    url, texts = seeded
    out = run(
        capsys,
        "lf",
        "report",
        task,
        "--json",
        "--store",
        url,
        "--tasks-file",
        tasks_file,
        "--sources",
        NO_PROMPTS,
        "--save",
    )
    report = json.loads(out)
    spec = load_tasks(tasks_file)[task]
    names = [lf["name"] for lf in report["lfs"]]
    assert names[: len(spec.labeling.rules)] == [r.name for r in spec.labeling.rules]
    assert {"reviewer_correction", "reviewer_confirmed", "foundation_model"} <= set(names)
    distinct = {" ".join(t.split()) for t in texts[task]}  # one point per distinct text
    assert report["examples"] == len(distinct) and report["gold"] > 0
    for lf in report["lfs"]:
        assert 0 <= lf["conflicts"] <= lf["overlaps"] <= lf["coverage"] <= 1
        assert lf["errors"] == 0
    by_name = {lf["name"]: lf for lf in report["lfs"]}
    assert by_name["reviewer_correction"]["accuracy"] == 1.0  # corrections are gold here
    assert {s["source"] for s in report["sources"]} == {"rule", "python", "feedback", "model"}
    assert report["combined"]["coverage"] > 0 and report["label_model"]["chosen"] in (
        "snorkel",
        "majority",
    )
    saved = ExampleStore(url).reports(task, "lf_report")
    assert saved and saved[-1]["payload"]["lfs"] == report["lfs"]


@pytest.mark.parametrize("task", ["youtube-spam", "banking77"])
def test_lf_report_table_lists_lfs_sources_and_the_label_model(capsys, seeded, tasks_file, task):
    url, _ = seeded
    out = run(
        capsys,
        "lf",
        "report",
        task,
        "--store",
        url,
        "--tasks-file",
        tasks_file,
        "--sources",
        NO_PROMPTS,
    )
    lines = out.splitlines()
    assert lines[0].startswith(f"task {task}: ")
    assert lines[1].startswith("label model: ")
    assert any(line.startswith("LF ") and "cov%" in line and "acc%" in line for line in lines)
    first_rule = load_tasks(tasks_file)[task].labeling.rules[0].name
    assert any(line.startswith(first_rule + " ") and " rule " in line for line in lines)
    assert any(line.startswith("label_model ") for line in lines)


def test_lf_report_uses_cached_prompt_scores_without_loading_the_fm(
    capsys, seeded, tasks_file, monkeypatch
):
    from protege.foundation import backend

    def no_fm(*_):
        raise AssertionError("the FM must not load when every score is cached")

    monkeypatch.setattr(backend, "create_backend", no_fm)
    url, texts = seeded
    task = load_tasks(tasks_file)["youtube-spam"]
    store = ExampleStore(url)
    for i, spec in enumerate(task.labeling.prompt_lfs):
        key = prompt_key(task, spec, default_model_name())
        probs = np.tile([0.9, 0.1] if i == 0 else [0.3, 0.7], (len(texts["youtube-spam"]), 1))
        store.put_scores(key, texts["youtube-spam"], probs)
    report = json.loads(
        run(
            capsys,
            "lf",
            "report",
            "youtube-spam",
            "--json",
            "--store",
            url,
            "--tasks-file",
            tasks_file,
        )
    )
    prompts = {lf["name"]: lf for lf in report["lfs"] if lf["source"] == "prompt"}
    assert prompts["prompt_is_spam"]["coverage"] == 1.0 and prompts["prompt_is_spam"][
        "polarity"
    ] == ["HAM"]
    assert prompts["prompt_self_promotion"]["coverage"] == 0.0  # 0.7 < its 0.75 threshold


@pytest.mark.parametrize("task", ["youtube-spam", "banking77"])
def test_errors_lists_disagreements_and_thumbs_down_grouped_by_label_with_votes(
    capsys, seeded, tasks_file, task
):
    url, _ = seeded
    common = ("--store", url, "--tasks-file", tasks_file, "--sources", NO_PROMPTS)
    data = json.loads(run(capsys, "errors", task, "--json", "--limit", "3", *common))
    assert data["task"] == task and sum(data["totals"].values()) > 0
    first_label = load_tasks(tasks_file)[task].label_names[0]
    for label, cases in data["groups"].items():
        assert 0 < len(cases) <= 3 and data["totals"][label] >= len(cases)
        for case in cases:
            assert case["label_model"] == label or label == "(no label)"
            assert case["reasons"] and set(case["reasons"]) <= {"fm_disagrees", "thumbs_down"}
            if "fm_disagrees" in case["reasons"]:
                assert case["foundation"] == first_label != case["label_model"]
            if "thumbs_down" in case["reasons"]:
                assert case["thumbs_down_by"] == ["ann"]
            assert case["votes"].get("foundation_model") == first_label
    text = run(capsys, "errors", task, *common)
    assert text.startswith(f"task {task}: ") and "\n== " in text and "    votes: " in text


def test_gold_import_cli_adds_gold_and_rejects_unknown_labels(capsys, tmp_path, tasks_file):
    url = f"sqlite:///{tmp_path / 'g.db'}"
    good = tmp_path / "gold.csv"
    good.write_text("text,label\nhello there,HAM\nbuy now http://x.co,SPAM\n")
    summary = json.loads(
        run(
            capsys,
            "gold",
            "import",
            "youtube-spam",
            str(good),
            "--store",
            url,
            "--tasks-file",
            tasks_file,
        )
    )
    assert summary["imported"] == 2
    bad = tmp_path / "bad.csv"
    bad.write_text("text,label\nhello,EGGS\n")
    with pytest.raises(SystemExit, match="unknown label 'EGGS'"):
        main(
            ["gold", "import", "youtube-spam", str(bad), "--store", url, "--tasks-file", tasks_file]
        )
    stats = json.loads(
        run(capsys, "gold", "stats", "youtube-spam", "--store", url, "--tasks-file", tasks_file)
    )
    assert stats["total"] == 2


def test_unknown_task_is_a_clear_error(tasks_file, tmp_path):
    with pytest.raises(SystemExit, match="unknown task 'nope'"):
        main(
            [
                "lf",
                "report",
                "nope",
                "--store",
                f"sqlite:///{tmp_path / 's.db'}",
                "--tasks-file",
                tasks_file,
            ]
        )


def test_labeled_data_keeps_exam_and_calibration_texts_out_of_the_training_set(seeded):
    from protege.improver.data.gold import TRAIN
    from protege.improver.labeling.labeled import label_store
    from protege.improver.training import TrainingSet

    url, _ = seeded
    task = load_tasks(DEFAULT_TASKS_FILE)["youtube-spam"]
    data = label_store(task, ExampleStore(url), sources=("rule", "python", "feedback"))
    held_out = {g.text for g in data.gold if g.split != TRAIN}  # trusted or not
    assert held_out and all(data.split[i] == TRAIN for i in data.training_rows())
    assert {"exam", "calibration"} <= set(data.split)
    training = TrainingSet.from_labeled(data)
    assert not held_out & set(training.texts)
    assert training.gold.sum() == sum(1 for g in data.gold if g.split == "train")
    assert len(training) > training.gold.sum()  # soft rows too
