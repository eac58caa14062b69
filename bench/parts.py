"""ftkit's per-step choices, each measured alone, in one process, on a workload's real model and batches — the
choices that bench/run.py's end-to-end ablations cannot switch off from the command line.

    .venv/bin/python bench/parts.py                        # MiniLM on polarity; writes bench/PARTS.md
    .venv/bin/python bench/parts.py --rounds 3 --results /tmp/parts.md

- optimizer: one AdamW update, fused (ftkit) against foreach (multi-tensor) and one parameter at a time, over the
  LoRA parameters and over all of the model's parameters (full fine-tuning);
- attention: a LoRA training step (forward, backward, update) over the same length-grouped batches, SDPA (ftkit;
  the transformers default) against the eager implementation;
- LoRA's input dropout: the same steps, fused with the adapter's down-projection (ftkit) against peft's Dropout then
  Linear;
- loss readout: the same steps, the loss summed on the device and read at log steps (ftkit) against `.item()` after
  every step.

Every round times each variant once, in alternating order; a ratio is the alternative's time over ftkit's choice's
in the same round (> 1: ftkit's choice is faster), min / median / max over rounds.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from run import environment  # noqa: E402

OPTIMIZERS = {"fused": {"fused": True}, "foreach": {"foreach": True}, "one parameter at a time": {"foreach": False}}


def lora_model(path: Path, labels: int, attention: str, fused_dropout: bool = True):
    """ftkit's LoRA defaults on peft's default targets; ``fused_dropout``: as ftkit trains it (else peft's own)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForSequenceClassification

    from ftkit.methods._lora_dropout import fuse_dropout

    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=labels, attn_implementation=attention)
    model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, lora_dropout=0.1, task_type="SEQ_CLS"))
    if fused_dropout:
        fuse_dropout(model)
    return model


def batches(path: Path, data: str, rows: int, batch_size: int, max_length: int) -> list[dict]:
    """The first ``rows`` rows, tokenized and cut into length-grouped batches padded to their longest row."""
    import torch

    from ftkit.data.sources import read_table
    from ftkit.modeling.loading import load_tokenizer
    from ftkit.training.loop import length_grouped_batches

    table = read_table(data)
    texts, names = table.columns["text"][:rows], [str(v) for v in table.columns["label"][:rows]]
    labels = {name: i for i, name in enumerate(sorted(set(names)))}
    ids = load_tokenizer(path)(texts, truncation=True, max_length=max_length)["input_ids"]
    out = []
    for group in length_grouped_batches([len(x) for x in ids], batch_size, seed=0, epoch=0):
        width = max(len(ids[i]) for i in group)
        out.append({"input_ids": torch.tensor([ids[i] + [0] * (width - len(ids[i])) for i in group]),
                    "attention_mask": torch.tensor([[1] * len(ids[i]) + [0] * (width - len(ids[i])) for i in group]),
                    "labels": torch.tensor([labels[names[i]] for i in group])})
    return out


def train_steps(model, optimizer, data: list[dict], readout: str) -> float:
    """Seconds per training step over ``data``."""
    import torch

    from ftkit.modeling.loading import cpu_kernels

    model.train()
    running, seen = torch.zeros(()), 0.0
    with cpu_kernels(model):
        start = time.perf_counter()
        for batch in data:
            loss = model(**batch).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if readout == "item":
                seen += loss.item()
            else:
                running += loss.detach()
        return (time.perf_counter() - start) / len(data)


def update_seconds(params, kind: str, repeats: int) -> float:
    """Seconds per AdamW update of ``params`` (random gradients), after one untimed update that creates the state."""
    import torch

    for p in params:
        p.grad = torch.randn_like(p)
    optimizer = torch.optim.AdamW(params, lr=1e-5, **OPTIMIZERS[kind])
    optimizer.step()
    start = time.perf_counter()
    for _ in range(repeats):
        optimizer.step()
    return (time.perf_counter() - start) / repeats


def measure(path: Path, data: str, rounds: int, rows: int, batch_size: int, max_length: int) -> list[dict]:
    """Rows of {part, ftkit, alternative, times: {variant: [seconds per round]}}."""
    import torch
    from transformers import AutoModelForSequenceClassification

    data_batches = batches(path, data, rows, batch_size, max_length)
    n_labels = int(max(int(b["labels"].max()) for b in data_batches)) + 1
    models = {"sdpa": lora_model(path, n_labels, "sdpa"), "eager": lora_model(path, n_labels, "eager"),
              "peft's Dropout + Linear": lora_model(path, n_labels, "sdpa", fused_dropout=False)}
    optimizers = {a: torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=1e-4, fused=True)
                  for a, m in models.items()}
    lora = [p for p in models["sdpa"].parameters() if p.requires_grad]
    full = list(AutoModelForSequenceClassification.from_pretrained(path, num_labels=n_labels).parameters())
    rows_out = []

    def part(name: str, ftkit: str, alternatives: list[str], run) -> None:
        variants = [ftkit, *alternatives]
        times = {v: [] for v in variants}
        for r in range(rounds):
            for v in (variants if r % 2 == 0 else variants[::-1]):
                times[v].append(run(v))
        rows_out.extend({"part": name, "ftkit": ftkit, "alternative": a, "times": {ftkit: times[ftkit], a: times[a]}}
                        for a in alternatives)

    for name, params in ((f"AdamW update, LoRA parameters ({sum(p.numel() for p in lora):,} in {len(lora)} "
                          "tensors)", lora),
                         (f"AdamW update, all parameters ({sum(p.numel() for p in full):,} in {len(full)} tensors)",
                          full)):
        part(name, "fused", ["foreach", "one parameter at a time"],
             lambda kind, ps=params: update_seconds(ps, kind, 10))

    def step(key: str, readout: str = "device") -> float:
        return train_steps(models[key], optimizers[key], data_batches, readout)

    for key in models:  # one untimed pass: allocator and kernel warm-up, the optimizer's state
        train_steps(models[key], optimizers[key], data_batches[:2], "device")
    what = f"({len(data_batches)} batches of {batch_size})"
    part(f"LoRA training step, attention {what}", "sdpa", ["eager"], step)
    fused, summed = "fused with the down-projection", "summed on the device"
    part(f"LoRA training step, adapter input dropout {what}", fused, ["peft's Dropout + Linear"],
         lambda v: step("sdpa" if v == fused else v))
    part(f"LoRA training step, loss readout {what}", summed, [".item() every step"],
         lambda v: step("sdpa", "device" if v == summed else "item"))
    return rows_out


def render(rows: list[dict], command: str, note: str) -> str:
    lines = ["# ftkit's per-step choices, measured one at a time", "", f"Command: `{command}`  ",
             environment("cpu"), "", note, "",
             "| part | ftkit | alternative | ftkit's time | alternative's time | "
             "alternative / ftkit (min / median / max) |",
             "|---|---|---|---|---|---|"]
    for row in rows:
        mine, other = row["times"][row["ftkit"]], row["times"][row["alternative"]]
        ratios = [o / m for m, o in zip(mine, other)]
        lines.append(f"| {row['part']} | {row['ftkit']} | {row['alternative']} | {_ms(statistics.median(mine))} | "
                     f"{_ms(statistics.median(other))} | {min(ratios):.2f} / {statistics.median(ratios):.2f} / "
                     f"{max(ratios):.2f} |")
    return "\n".join(lines) + "\n"


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.2f} ms" if seconds < 0.1 else f"{seconds:.3f} s"


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="minilm", help="a built-in model or a checkpoint dir (sequence classification)")
    ap.add_argument("--data", default="polarity", help="a built-in dataset or a file with text and label columns")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--rows", type=int, default=256, help="rows in the timed training steps")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--results", default=str(HERE / "PARTS.md"))
    a = ap.parse_args(argv)
    from ftkit.rundir.runs import base_model_path
    from ftkit.util.libraries import prepare_libraries

    prepare_libraries()
    rows = measure(base_model_path(a.model), a.data, a.rounds, a.rows, a.batch_size, a.max_length)
    command = "bench/parts.py " + " ".join(argv if argv is not None else sys.argv[1:])
    note = (f"{a.model} on {a.data}: the first {a.rows} rows, batch {a.batch_size}, up to {a.max_length} tokens; "
            f"{a.rounds} rounds. Times are per update or per training step (median over rounds).")
    text = render(rows, command.strip(), note)
    Path(a.results).write_text(text, encoding="utf-8")
    print(text)
    return rows


if __name__ == "__main__":
    main()
