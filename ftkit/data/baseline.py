"""The linear baseline beside every classification run: TF-IDF over word uni- and bigrams + logistic regression
(scikit-learn), fit on the run's training rows and scored on its held-out rows with the task's own metrics, in
seconds. A user sees at once when fine-tuning does not pay off (on a topic set, the defaults once lost to it)."""

from __future__ import annotations

import time

NAME = "tf-idf + logistic regression"
MAX_FEATURES = 200_000  # memory stays bounded on large data; the most frequent n-grams are kept


def name(kind: str = "single_label") -> str:
    """The baseline for each kind of cls problem: logistic regression (one per class for multi-label, which the
    classes' 0/1 predictions make), ridge regression for a number."""
    return {"multi_label": "tf-idf + logistic regression per class",
            "regression": "tf-idf + ridge regression"}.get(kind, NAME)


def fit_and_score(train_texts: list[str], train_y: list, eval_texts: list[str], seed: int,
                  kind: str = "single_label") -> tuple[list, float] | None:
    """Predictions for ``eval_texts`` in the form the task's metrics take (label ids; 0/1 per class; numbers),
    and the seconds taken; None when the training texts have no word to read (TF-IDF reads words of two or more
    letters or digits: texts of emoji or single characters have none)."""
    import numpy as np
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression, Ridge

    start = time.perf_counter()
    vectorizer = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, max_features=MAX_FEATURES)
    try:
        x = vectorizer.fit_transform(train_texts)
    except ValueError:  # "empty vocabulary": no baseline rather than a failed run
        return None
    x_eval = vectorizer.transform(eval_texts)
    if kind == "regression":
        preds = Ridge(alpha=1.0, random_state=seed).fit(x, train_y).predict(x_eval).tolist()
    elif kind == "multi_label":
        y = np.asarray(train_y)
        preds = np.zeros((len(eval_texts), y.shape[1]))
        for k in range(y.shape[1]):  # a class always or never present in training: predicted that way
            col = y[:, k]
            preds[:, k] = (col[0] if col.min() == col.max() else
                           LogisticRegression(max_iter=1000, random_state=seed).fit(x, col).predict(x_eval))
        preds = preds.tolist()
    else:
        preds = LogisticRegression(max_iter=1000, random_state=seed).fit(x, train_y).predict(x_eval).tolist()
    return preds, time.perf_counter() - start


def behind(summary: dict) -> str | None:
    """A warning when the fine-tuned model's main metric is below the baseline's (None otherwise)."""
    base, metric = summary.get("baseline"), summary["main_metric"]
    if not base or metric not in base or metric not in summary["eval"]:
        return None
    mine, theirs = summary["eval"][metric], base[metric]
    if mine >= theirs:
        return None
    return (f"held-out {metric} {mine:.4f} is below the {base.get('method', NAME)} baseline's {theirs:.4f}: "
            "fine-tuning is not paying off yet (train longer or at a higher learning rate if the loss was still "
            "falling; see metrics.jsonl)")
