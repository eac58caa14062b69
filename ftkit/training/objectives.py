"""Training objectives beyond the model's own cross-entropy, for tasks that score classes (cls per row, tag per
token; ``Task.classifies``): label smoothing, class weights, R-Drop (Liang et al. 2021) and adversarial training in
embedding space — FGM (Miyato et al. 2017) and PGD (Madry et al. 2018). Each is a ``train.*`` key, off by default.

The adversarial step perturbs the word embeddings' *output* (not the embedding matrix), so it works whether the
embeddings train or not (LoRA freezes them): the clean loss's gradient with respect to that output gives the
direction, each row's perturbation has L2 norm ``adversarial_epsilon``, and the loss returned is the clean one plus
the perturbed one, so one backward pass gives both gradients (the clean graph is kept until then: about twice the
activation memory of a plain step).
"""

from __future__ import annotations

from ftkit.data.batches import IGNORE


def scored(logits, labels):
    """(logits [N, C], labels [N]) at the positions that carry a label: every row (cls), or the labelled tokens
    (tag; prompt tuning's virtual tokens, prepended to the logits, are skipped)."""
    if logits.dim() == 3:
        logits = logits[:, logits.shape[1] - labels.shape[1]:]
        keep = labels != IGNORE
        return logits[keep], labels[keep]
    return logits, labels


def class_weights(features: list[dict], n_labels: int) -> list[float]:
    """Inverse label frequency over the training features, scaled to a mean of 1 over the labels that occur;
    a label that never occurs gets 1 (it takes no loss anyway)."""
    counts = [0] * n_labels
    for f in features:
        for y in (f["labels"] if isinstance(f["labels"], list) else [f["labels"]]):
            if 0 <= y < n_labels:
                counts[y] += 1
    seen = [c for c in counts if c]
    total = sum(seen)
    raw = [total / (len(seen) * c) if c else 1.0 for c in counts]
    mean = sum(r for r, c in zip(raw, counts) if c) / len(seen)
    return [r / mean if c else 1.0 for r, c in zip(raw, counts)]


def symmetric_kl(a, b):
    """(KL(p_a || p_b) + KL(p_b || p_a)) / 2 per position, averaged over positions (R-Drop's term)."""
    import torch.nn.functional as F

    la, lb = F.log_softmax(a, -1), F.log_softmax(b, -1)
    return ((la.exp() * (la - lb)).sum(-1) + (lb.exp() * (lb - la)).sum(-1)).mean() / 2


def classification_loss(train, weights: list[float] | None):
    """The training loss (model, batch) -> scalar for the loop (``Batching.loss``), from ``train`` (TrainConfig)."""
    import torch
    import torch.nn.functional as F

    def cross_entropy(model, batch, perturb=None):
        inputs = {k: v for k, v in batch.items() if k != "labels"}
        with embeddings_shifted(model, perturb):
            logits, labels = scored(model(**inputs).logits.float(), batch["labels"])
        labels = labels.masked_fill(labels < 0, IGNORE)  # UNSEEN (-1): a label the head has no output for
        w = torch.tensor(weights, device=logits.device) if weights else None
        ce = F.cross_entropy(logits, labels, weight=w, ignore_index=IGNORE, label_smoothing=train.label_smoothing)
        if train.rdrop:  # a second pass draws other dropout masks
            with embeddings_shifted(model, perturb):
                again, _ = scored(model(**inputs).logits.float(), batch["labels"])
            ce = (ce + F.cross_entropy(again, labels, weight=w, ignore_index=IGNORE,
                                       label_smoothing=train.label_smoothing)) / 2
            ce = ce + train.rdrop * symmetric_kl(logits[labels != IGNORE], again[labels != IGNORE])
        return ce

    def loss(model, batch):
        if train.adversarial == "none":
            return cross_entropy(model, batch)
        recorder = EmbeddingOutput()
        clean = cross_entropy(model, batch, recorder)
        # with R-Drop the embeddings ran twice, to the same values: the gradient at them is the sum of both
        grad = sum(torch.autograd.grad(clean, recorder.outputs, retain_graph=True))
        eps = train.adversarial_epsilon
        steps = train.adversarial_steps if train.adversarial == "pgd" else 1
        delta = torch.zeros_like(grad)
        for step in range(steps):
            delta = project(delta + (eps / steps) * unit(grad), eps)
            if step < steps - 1:  # ascend again from the perturbed point; no parameter gradients on the way
                shift = Shift(delta.requires_grad_(True))
                grad, = torch.autograd.grad(cross_entropy(model, batch, shift), delta)
                delta = delta.detach()
        return clean + cross_entropy(model, batch, Shift(delta.detach()))

    return loss


def unit(g):
    """Each row's gradient scaled to L2 norm 1 (over its tokens and hidden units)."""
    norm = g.flatten(1).norm(dim=1).clamp_min(1e-12)
    return g / norm.view(-1, *[1] * (g.dim() - 1))


def project(delta, eps: float):
    """Each row's perturbation scaled back onto the L2 ball of radius ``eps`` when outside it."""
    norm = delta.flatten(1).norm(dim=1).clamp_min(1e-12)
    return delta * (eps / norm).clamp(max=1.0).view(-1, *[1] * (delta.dim() - 1))


class EmbeddingOutput:
    """Records the word embeddings' outputs, made to require a gradient (frozen embeddings give none otherwise)."""

    def __init__(self):
        self.outputs = []

    def __call__(self, module, args, output):
        self.outputs.append(output if output.requires_grad else output.detach().requires_grad_(True))
        return self.outputs[-1]


class Shift:
    """Adds ``delta`` to the word embeddings' output."""

    def __init__(self, delta):
        self.delta = delta

    def __call__(self, module, args, output):
        return output + self.delta.to(output.dtype)


class embeddings_shifted:
    """A forward hook on the model's input embeddings for the duration (none when ``hook`` is None)."""

    def __init__(self, model, hook):
        self.model, self.hook, self.handle = model, hook, None

    def __enter__(self):
        if self.hook is not None:
            module = self.model.module if hasattr(self.model, "module") else self.model  # DDP's wrapper
            self.handle = module.get_input_embeddings().register_forward_hook(self.hook)

    def __exit__(self, *exc):
        if self.handle is not None:
            self.handle.remove()
