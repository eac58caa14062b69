"""The linear baseline beside every classification run: TF-IDF over word uni- and bigrams + logistic regression
(scikit-learn), fit on the run's training rows and scored on its held-out rows with the task's own metrics, in
seconds. A user sees at once when fine-tuning does not pay off (on a topic set, the defaults once lost to it)."""

from __future__ import annotations

import time

NAME = "tf-idf + logistic regression"
MAX_FEATURES = 200_000  # memory stays bounded on large data; the most frequent n-grams are kept


def fit_and_score(train_texts: list[str], train_y: list[int], eval_texts: list[str], seed: int) -> tuple[list, float]:
    """Predicted label ids for ``eval_texts``, and the seconds taken."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    start = time.perf_counter()
    vectorizer = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, max_features=MAX_FEATURES)
    x = vectorizer.fit_transform(train_texts)
    model = LogisticRegression(max_iter=1000, random_state=seed).fit(x, train_y)
    return model.predict(vectorizer.transform(eval_texts)).tolist(), time.perf_counter() - start


def behind(summary: dict) -> str | None:
    """A warning when the fine-tuned model's main metric is below the baseline's (None otherwise)."""
    base, metric = summary.get("baseline"), summary["main_metric"]
    if not base or metric not in base or metric not in summary["eval"]:
        return None
    mine, theirs = summary["eval"][metric], base[metric]
    if mine >= theirs:
        return None
    return (f"held-out {metric} {mine:.4f} is below the {NAME} baseline's {theirs:.4f}: fine-tuning is not paying "
            "off yet (train longer or at a higher learning rate if the loss was still falling; see metrics.jsonl)")
