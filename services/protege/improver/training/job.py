"""A training job's entrypoint: `python -m protege.improver.training.job [FOLDER]`.

Ray's job server runs it in the job's working_dir (FOLDER, default "."), which holds what
`exchange.write_input` wrote; it trains with plain `train_specialist` and leaves the
candidate at the input's `output` (a folder or an MLflow artifact URI), where the improver
reads it back. It needs no Ray connection of its own.
"""

from __future__ import annotations

import logging
import sys
import tempfile
from pathlib import Path

from protege.improver.training.distill import train_specialist
from protege.improver.training.exchange import read_input, upload, write_candidate

log = logging.getLogger("protege.improver.training.job")


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    argv = sys.argv[1:] if argv is None else argv
    job = read_input(Path(argv[0] if argv else "."))
    log.info(
        "%s: training %s on %d examples", job.task, ",".join(job.spec.families), len(job.train)
    )
    candidate = train_specialist(job.task, job.train, job.spec, **job.kwargs)
    with tempfile.TemporaryDirectory(prefix="protege-job-") as tmp:
        upload(write_candidate(candidate, Path(tmp)), job.output)
    log.info("%s: %s candidate written to %s", job.task, candidate.family, job.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
