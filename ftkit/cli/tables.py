"""What the CLI prints for `eval`, `info` and `train --dry-run`: rich tables on the terminal."""

from __future__ import annotations

from ftkit.util.units import human_bytes


def print_eval(metrics: dict) -> None:
    """Headline metrics, then a per-class table when the task reports one."""
    from rich.console import Console
    from rich.table import Table

    console = Console()
    scalars = {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    console.print("  ".join(f"[bold]{k}[/] {v:.4f}" if isinstance(v, float) else f"[bold]{k}[/] {v}"
                            for k, v in scalars.items()))
    for key, title in (("per_class", "class"), ("per_entity", "entity")):
        if metrics.get(key):
            table = Table(title, "precision", "recall", "f1", "support")
            for name, m in metrics[key].items():
                table.add_row(name, f"{m['precision']:.4f}", f"{m['recall']:.4f}", f"{m['f1']:.4f}",
                              str(m["support"]))
            console.print(table)


def print_info(info: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table("", "", show_header=False)
    table.add_row("model", f"{info['model']} ({info['path']})")
    table.add_row("task / method", f"{info['task']} / {info['method']}")
    table.add_row("parameters", f"{info['total_params']:,}")
    table.add_row("trainable", f"{info['trainable_params']:,} ({100 * info['trainable_share']:.2f}%)")
    table.add_row("weights in memory" + (f" ({info['quant']})" if info["quant"] != "none" else ""),
                  human_bytes(info["weights_bytes"]))
    table.add_row("+ gradients and AdamW state", human_bytes(info["training_state_bytes"]))
    table.add_row(f"+ activations (batch {info['batch_size']} x {info['max_length']} tokens, {info['precision']}"
                  + (", checkpointed" if info["gradient_checkpointing"] else "") + ")",
                  human_bytes(info["activations_bytes"]))
    table.add_row("estimated peak training memory", human_bytes(info["estimated_peak_bytes"]))
    if info["quant"] != "none":
        table.add_row("note", "bitsandbytes' own kernel buffers are not included (on CPU they measured as much "
                              "again for minilm 8bit: README)")
    Console().print(table)


def print_dry_run(result: dict) -> None:
    import yaml

    d = result["dry_run"]
    print("# resolved config\n" + yaml.safe_dump(result["config"], sort_keys=False).rstrip())
    print(f"# data\ntrain rows {d['train_rows']}, eval rows {d['eval_rows']}")
    lengths = "  ".join(f"{k} {v}" for k, v in d["length_tokens"].items())
    print(f"tokens per training row: {lengths}; {d['long_rows']} rows would be {d['long_rows_are']} at "
          f"data.max_length={d['max_length']}")
    if "label_counts" in d:
        print("labels: " + ", ".join(f"{k} {v}" for k, v in d["label_counts"].items()))
    print("# model")
    print_info(d["model"])
