"""Quality on review-sentiment's test split (Sentiment Labelled Sentences): FM zero-shot,
label model, the specialist after one improver round, the same reviews alone, fully
supervised. What and how: `bench/_quality.py`.

    python bench/quality_sentiment.py --help
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _quality import main

if __name__ == "__main__":
    # The FM scores ~2 texts/s on two labels: a seeded 300 of the 993 test texts.
    main("review-sentiment", fm_sample=300, fm_budget=150.0, results="quality_sentiment")
