"""How the classification-style tasks score predictions: single-label (confusion matrix, accuracy, per-class and
macro F1), multi-label (micro/macro F1, exact match) and regression (R², errors, correlations), from arrays;
numpy and SciPy are imported when called. The tests check them against scikit-learn and SciPy."""

from __future__ import annotations

from ftkit.tasks._common import UNSEEN, UNSEEN_ROW


def confusion_metrics(preds, refs, labels: list[str]) -> dict:
    """Accuracy, macro-F1, per-class precision/recall/F1 and the confusion matrix of label ids."""
    import numpy as np

    k = len(labels)
    unseen = refs == UNSEEN  # a gold label the model cannot predict: an error, outside the confusion matrix
    cm = np.zeros((k, k), dtype=np.int64)  # rows: true label, columns: predicted
    np.add.at(cm, (refs[~unseen], preds[~unseen]), 1)
    tp = np.diag(cm).astype(float)
    precision = np.divide(tp, cm.sum(0), out=np.zeros(k), where=cm.sum(0) > 0)
    recall = np.divide(tp, cm.sum(1), out=np.zeros(k), where=cm.sum(1) > 0)
    f1 = np.divide(2 * precision * recall, precision + recall, out=np.zeros(k), where=(precision + recall) > 0)
    present = cm.sum(1) > 0  # macro-F1 over the classes that occur in the references
    per_class = {name: {"precision": float(precision[i]), "recall": float(recall[i]), "f1": float(f1[i]),
                        "support": int(cm[i].sum())} for i, name in enumerate(labels)}
    if unseen.any():
        per_class[UNSEEN_ROW] = {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": int(unseen.sum())}
    return {
        "accuracy": float(tp.sum() / max(1, len(refs))),  # unseen gold labels count as errors
        "macro_f1": float(f1[present].mean()) if present.any() else 0.0,  # over the model's classes
        "per_class": per_class,
        "confusion_matrix": {"labels": labels, "matrix": cm.tolist()},
    }


def multi_label_metrics(pred, gold, labels: list[str]) -> dict:
    """Micro/macro precision, recall and F1 and per-class scores of boolean [examples, classes] matrices; exact
    match: the share of examples whose whole set of classes is right. Macro over the classes present in ``gold``."""
    import numpy as np

    tp, fp, fn = (pred & gold).sum(0), (pred & ~gold).sum(0), (~pred & gold).sum(0)

    def prf(tp, fp, fn):
        p = np.divide(tp, tp + fp, out=np.zeros_like(tp, dtype=float), where=(tp + fp) > 0)
        r = np.divide(tp, tp + fn, out=np.zeros_like(tp, dtype=float), where=(tp + fn) > 0)
        f = np.divide(2 * p * r, p + r, out=np.zeros_like(p), where=(p + r) > 0)
        return p, r, f

    mp, mr, mf = prf(np.array(tp.sum()), np.array(fp.sum()), np.array(fn.sum()))
    p, r, f = prf(tp, fp, fn)
    present = gold.sum(0) > 0
    return {"micro_f1": float(mf), "macro_f1": float(f[present].mean()) if present.any() else 0.0,
            "micro_precision": float(mp), "micro_recall": float(mr),
            "exact_match": float((pred == gold).all(1).mean()) if len(gold) else 0.0,
            "per_class": {name: {"precision": float(p[k]), "recall": float(r[k]), "f1": float(f[k]),
                                 "support": int(gold[:, k].sum())} for k, name in enumerate(labels)}}


def regression_metrics(pred, gold) -> dict:
    """MSE, RMSE, MAE, R² (1 - squared error / variance of the references: the main metric), Pearson and
    Spearman correlation (0 when either side is constant)."""
    import numpy as np
    from scipy.stats import rankdata

    def pearson(a, b) -> float:
        a, b = a - a.mean(), b - b.mean()
        denom = float(np.sqrt((a * a).sum() * (b * b).sum()))
        return float((a * b).sum() / denom) if denom > 0 else 0.0

    err = pred - gold
    mse, var = float((err ** 2).mean()), float(gold.var())
    return {"r2": 1 - mse / var if var > 0 else 0.0, "mse": mse, "rmse": float(np.sqrt(mse)),
            "mae": float(np.abs(err).mean()), "pearson": pearson(pred, gold),
            "spearman": pearson(rankdata(pred), rankdata(gold))}
