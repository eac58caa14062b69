"""The reference: what a user writes without ftkit — a plain transformers `Trainer` + peft LoRA script, following
the Hugging Face course/peft examples (dynamic padding by the standard collators, no length grouping, Trainer's
defaults otherwise), with the same hyper-parameters ftkit uses (LoRA r=8, alpha=16, dropout 0.1 on peft's default
targets, AdamW, linear schedule with 6% warm-up, weight decay 0.01, clipping at 1.0, one epoch).

    python bench/reference.py --task cls --model DIR --train train.jsonl --eval eval.jsonl --batch-size 16 \\
        --max-length 128 --lr 5e-4

Prints `step N` on stderr after every optimizer step (the harness times them) and one JSON line on stdout with
the held-out metric.
"""

from __future__ import annotations

import argparse
import json
import math
import sys


def read_jsonl(path: str) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--task", choices=["cls", "tag", "gen"], required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--train", required=True)
    ap.add_argument("--eval", required=True)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--precision", choices=["fp32", "bf16", "fp16"], default="fp32")
    ap.add_argument("--output", default="/tmp/ftkit-bench-reference")
    a = ap.parse_args()

    import numpy as np
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import (AutoModelForCausalLM, AutoModelForSequenceClassification,
                              AutoModelForTokenClassification, AutoTokenizer, DataCollatorForSeq2Seq,
                              DataCollatorForTokenClassification, DataCollatorWithPadding, Trainer, TrainerCallback,
                              TrainingArguments, set_seed)

    set_seed(a.seed)
    tok = AutoTokenizer.from_pretrained(a.model)
    train_rows, eval_rows = read_jsonl(a.train), read_jsonl(a.eval)

    if a.task == "cls":
        labels = sorted({r["label"] for r in train_rows})
        lid = {name: i for i, name in enumerate(labels)}

        def encode(r):
            return {**tok(r["text"], truncation=True, max_length=a.max_length), "labels": lid[r["label"]]}

        model = AutoModelForSequenceClassification.from_pretrained(
            a.model, num_labels=len(labels), id2label=dict(enumerate(labels)), label2id=lid)
        collator, task_type = DataCollatorWithPadding(tok), "SEQ_CLS"

        def metric(p):
            return {"accuracy": float((p.predictions.argmax(-1) == p.label_ids).mean())}
    elif a.task == "tag":
        labels = sorted({t for r in train_rows for t in r["tags"]})
        lid = {name: i for i, name in enumerate(labels)}

        def encode(r):
            enc = tok(r["tokens"], is_split_into_words=True, truncation=True, max_length=a.max_length)
            out, prev = [], None
            for w in enc.word_ids():  # the tag on each word's first sub-token
                out.append(-100 if w is None or w == prev else lid[r["tags"][w]])
                prev = w
            return {**enc, "labels": out}

        model = AutoModelForTokenClassification.from_pretrained(
            a.model, num_labels=len(labels), id2label=dict(enumerate(labels)), label2id=lid)
        collator, task_type = DataCollatorForTokenClassification(tok), "TOKEN_CLS"

        def metric(p):
            pred, ref = p.predictions.argmax(-1), p.label_ids
            keep = ref != -100
            return {"accuracy": float((pred[keep] == ref[keep]).mean())}
    else:
        if tok.pad_token is None:
            tok.pad_token = tok.eos_token

        def encode(r):
            conv = [{"role": "user", "content": r["prompt"]}, {"role": "assistant", "content": r["response"]}]
            prompt = tok.apply_chat_template(conv[:1], tokenize=True, add_generation_prompt=True,
                                             return_dict=True)["input_ids"]
            ids = tok.apply_chat_template(conv, tokenize=True, return_dict=True)["input_ids"][:a.max_length]
            return {"input_ids": ids, "labels": ([-100] * len(prompt) + ids[len(prompt):])[:len(ids)]}

        model = AutoModelForCausalLM.from_pretrained(a.model)
        collator, task_type, metric = DataCollatorForSeq2Seq(tok, label_pad_token_id=-100), "CAUSAL_LM", None

    model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, lora_dropout=0.1, task_type=task_type))
    train_ds, eval_ds = [encode(r) for r in train_rows], [encode(r) for r in eval_rows]
    if a.task == "gen":  # as ftkit does: rows with no response token left teach nothing
        train_ds = [f for f in train_ds if any(t != -100 for t in f["labels"][1:])]

    class StepClock(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            print(f"step {state.global_step}", file=sys.stderr, flush=True)

    args = TrainingArguments(
        output_dir=a.output, per_device_train_batch_size=a.batch_size, per_device_eval_batch_size=a.batch_size * 2,
        learning_rate=a.lr, num_train_epochs=1, warmup_steps=0.06,  # a float is a ratio in transformers 5
        weight_decay=0.01, max_grad_norm=1.0,
        lr_scheduler_type="linear", eval_strategy="no", save_strategy="no", logging_strategy="no",
        report_to="none", seed=a.seed, bf16=a.precision == "bf16", fp16=a.precision == "fp16",
        use_cpu=not torch.cuda.is_available(), disable_tqdm=True)
    trainer = Trainer(model=model, args=args, train_dataset=train_ds, eval_dataset=eval_ds, data_collator=collator,
                      compute_metrics=metric, callbacks=[StepClock()])
    trainer.train()
    result = trainer.evaluate()
    if torch.cuda.is_available():
        result["peak_gpu_bytes"] = torch.cuda.max_memory_allocated()
    if a.task == "gen":
        result["eval_perplexity"] = math.exp(min(result["eval_loss"], 50.0))
    print(json.dumps({k.removeprefix("eval_"): v for k, v in result.items()
                      if isinstance(v, (int, float, np.floating))}))


if __name__ == "__main__":
    main()
