"""Quality on banking77's test split: FM zero-shot, label model, the specialist after one
improver round, the same reviews alone, fully supervised. What and how: `bench/_quality.py`.

    python bench/quality_banking77.py --help
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _quality import main

if __name__ == "__main__":
    main("banking77", fm_sample=20, fm_budget=100.0)
