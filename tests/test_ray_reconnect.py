"""The improver's training survives a Ray cluster switch-over, as a RayService upgrade
does one: the cluster behind the dashboard address (the head service) is deleted and a
new one answers at the same address; the next training job goes to it. Jobs go over
HTTP (Ray's Jobs API), so there is no connection to lose: each job asks the address anew.

Two real single-node Ray clusters (`ray start --head`) in turn on one dashboard port."""

from __future__ import annotations

from protege import datasets
from protege.events.broker import free_port
from protege.improver.training import TrainingSet
from protege.improver.training.jobs import train_candidate
from protege.jobs import list_jobs
from protege.settings import Settings
from protege.taskspec import DEFAULT_TASKS_FILE, TrainingSpec, load_tasks
from ray_cluster import Cluster


def test_training_follows_the_head_address_to_a_new_cluster(tmp_path):
    task = load_tasks(DEFAULT_TASKS_FILE)["youtube-spam"]
    task = task.model_copy(update={"training": TrainingSpec(families=["tfidf"], num_cpus=1)})
    train = datasets.youtube("train").subset(range(200))
    data = TrainingSet.from_gold(task.label_names, train.texts, train.labels)
    port = free_port()
    settings = Settings(home=tmp_path, ray_dashboard_url=f"http://127.0.0.1:{port}")

    old = Cluster(dashboard_port=port)
    try:
        assert train_candidate(task, data, use_ray=True, settings=settings).family == "tfidf"
        (first,) = list_jobs(settings)
    finally:
        old.delete()  # the switch-over: the old cluster is gone...
    new = Cluster(dashboard_port=port)  # ...and a new one answers at the same address
    try:
        candidate = train_candidate(task, data, use_ray=True, settings=settings)
        assert candidate.family == "tfidf" and candidate.files.onnx
        (second,) = list_jobs(settings)  # trained on the new cluster, which knows no other
        assert second.id != first.id and second.status == "SUCCEEDED"
    finally:
        new.delete()
