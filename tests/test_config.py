"""Config layering (defaults < recipe < flags < --set), validation and the shipped recipes."""

from __future__ import annotations

import pytest
import yaml

from ftkit import config

from ftkit.config import recipes
from ftkit.errors import UsageError
from ftkit.methods import METHODS
from ftkit.tasks import TASKS


def test_defaults_are_the_builtin_job():
    cfg = config.resolve(None, {}, [])
    assert (cfg.task_name, cfg.method_name, cfg.model.name, cfg.data.train) == ("cls", "lora", "minilm", "polarity")
    assert cfg.method == {"name": "lora", "r": 8, "alpha": 16.0, "dropout": 0.1, "target_modules": None,
                          "loraplus_ratio": None}


def test_precedence_recipe_flags_set(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({"method": {"name": "lora", "r": 4}, "train": {"lr": 1e-3, "batch_size": 8,
                                                                                     "epochs": 2}}))
    cfg = config.resolve(recipe, {"train": {"lr": 2e-3, "epochs": 5}}, ["train.lr=3e-3", "method.alpha=32"])
    assert cfg.train.lr == 3e-3          # --set beats the flag and the recipe
    assert cfg.train.epochs == 5         # the flag beats the recipe
    assert cfg.train.batch_size == 8     # the recipe beats the default
    assert cfg.method["r"] == 4 and cfg.method["alpha"] == 32.0
    assert cfg.train.grad_accum == 1     # untouched default


def test_switching_method_drops_the_previous_methods_params(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("method: {name: lora, r: 4}\n")
    cfg = config.resolve(recipe, {"method": "full"}, [])
    assert cfg.method == {"name": "full"}


@pytest.mark.parametrize("layer, message", [
    ({"train": {"lrr": 1}},
     "unknown config key 'train.lrr'; valid keys: adversarial, adversarial_epsilon, adversarial_steps, batch_size"),
    ({"trian": {}}, "unknown config key 'trian'; valid keys: data, distill, method, model, output, task, train"),
    ({"method": {"name": "lora", "rank": 4}}, "unknown config key 'method.rank'; valid keys: alpha, dropout, "
                                              "loraplus_ratio, r, target_modules"),
    ({"data": {"columns": {"txt": "a"}}}, "unknown config key 'data.columns.txt'; valid keys: label, text, "
                                          "text_pair"),
    ({"train": {"batch_size": "big"}}, "config key 'train.batch_size': expected an integer, got 'big'"),
    ({"train": {"lr": -1}}, "config key 'train.lr': got -1.0, expected a number > 0"),
    ({"method": {"name": "lora", "r": 0}}, "config key 'method.r': got 0, expected an integer >= 1"),
    ({"train": {"precision": "fp8"}}, "config key 'train.precision': got 'fp8', expected fp32 or bf16 or fp16"),
    ({"task": "translate"}, "unknown task 'translate'; choose one of: cls, "),
    ({"method": "qlora"}, "unknown method 'qlora'; choose one of: adalora, dora, full, head, ia3, lora, prefix, "
                          "prompt"),
])
def test_bad_config_is_rejected_by_name(layer, message):
    with pytest.raises(UsageError) as e:
        config.resolve(None, layer, [])
    assert str(e.value).startswith(message)


def test_set_parses_yaml_values_and_lists():
    parsed = config.parse_set(["train.lr=1e-4", "method.target_modules=query,value", "train.group_by_length=false",
                               "data.columns.text=sentence"])
    assert parsed == {"train": {"lr": "1e-4", "group_by_length": False},  # YAML 1.1 reads 1e-4 as a string...
                      "method": {"target_modules": ["query", "value"]}, "data": {"columns": {"text": "sentence"}}}
    assert config.build(parsed).train.lr == 1e-4  # ...and the typed field turns it into a number
    with pytest.raises(UsageError, match="expected key=value"):
        config.parse_set(["train.lr"])


def test_bad_yaml_names_the_line(tmp_path):
    recipe = tmp_path / "bad.yaml"
    recipe.write_text("train:\n  lr: 1\n bad: [\n")
    with pytest.raises(UsageError, match=r"bad.yaml: line \d+: invalid YAML"):
        config.resolve(recipe, {}, [])


def test_saved_config_round_trips(tmp_path):
    cfg = config.resolve(None, {"method": {"name": "lora", "r": 16}, "train": {"lr": 1e-4}}, [])
    config.dump_yaml(cfg, tmp_path / "ftkit.yaml")
    assert config.resolve(tmp_path / "ftkit.yaml", {}, []) == cfg


def test_registries_list_choices():
    assert {"cls"} <= set(TASKS.names())
    assert {"full", "head", "lora"} <= set(METHODS.names())
    with pytest.raises(UsageError, match="unknown method 'nope'; choose one of: adalora, dora, full, head"):
        METHODS.get("nope")


@pytest.mark.parametrize("name", list(recipes.shipped()))
def test_shipped_recipes_validate(name):
    path = recipes.shipped()[name]
    assert recipes.describe(path), f"{path} needs a first-line '# description'"
    cfg = config.resolve(recipes.find(name), {}, [])
    assert cfg.task_name in TASKS and cfg.method_name in METHODS


def test_every_task_has_lora_adalora_and_prefix_recipes():
    combos = {(c.task_name, c.method_name) for c in (config.resolve(p, {}, []) for p in recipes.shipped().values())}
    assert {(t, m) for t in TASKS.names() for m in ("lora", "adalora", "prefix")} <= combos


def test_every_config_field_is_documented():
    for cls in (config.Config, *config.SECTIONS.values(), *(METHODS.get(n).params for n in METHODS.names()),
                *(TASKS.get(n).params for n in TASKS.names())):
        for name, text in config.field_help(cls).items():
            assert text, f"{cls.__name__}.{name} has no help text"


@pytest.mark.parametrize("flags, sets, epochs, min_steps", [
    ({}, [], 3.0, 300),  # left to ftkit: 3 epochs, at least 300 optimizer steps
    ({"train": {"epochs": 2}}, [], 2.0, 0),  # explicit epochs keep their meaning
    ({"train": {"max_steps": 50}}, [], 3.0, 0),
    ({}, ["train.min_steps=40"], 3.0, 40),
    ({"train": {"epochs": 1}}, ["train.min_steps=100"], 1.0, 100),
])
def test_the_run_length_left_unset_has_a_floor_of_optimizer_steps(flags, sets, epochs, min_steps):
    from types import SimpleNamespace

    from ftkit.training.loop import plan_steps

    cfg = config.resolve(None, flags, sets)
    assert (cfg.train.epochs, cfg.train.min_steps) == (epochs, min_steps)
    steps = plan_steps(100, SimpleNamespace(train=cfg.train), 1)[1]  # 100 rows, batch 32: 4 steps an epoch
    assert steps == (cfg.train.max_steps or max(4 * int(epochs), min_steps))
    assert config.build(cfg.to_dict()).train == cfg.train  # ftkit.yaml reproduces it


RECOVERY = {"train": {"epochs": 1.0, "min_steps": 300}}  # `ftkit prune`'s own length


@pytest.mark.parametrize("own, flags, sets, length", [
    ({}, {}, [], (3.0, None, 300)),  # a student: a fresh run's default length
    ({}, {"train": {"epochs": 1}}, [], (1.0, None, 0)),  # failed before: the run's saved floor made it 300 steps
    (RECOVERY, {}, [], (1.0, None, 300)),
    (RECOVERY, {"train": {"epochs": 0.5}}, [], (0.5, None, 0)),
    (RECOVERY, {"train": {"max_steps": 7}}, [], (1.0, 7, 0)),
    (RECOVERY, {}, ["train.min_steps=20"], (1.0, None, 20)),
])
def test_a_run_made_from_a_finished_one_takes_its_own_length(own, flags, sets, length):
    run = config.resolve(None, {"method": "full", "train": {"lr": 5e-4, "seed": 7}},
                         ["distill.teacher=t", "distill.alpha=0.8"])  # a distilled student of the default length
    assert run.train.min_steps == 300
    cfg = config.derived(run, "run r", {"output": "o", **own}, flags, sets)
    assert (cfg.train.epochs, cfg.train.max_steps, cfg.train.min_steps) == length
    assert cfg.train.seed == 7 and cfg.method["name"] == "lora" and cfg.train.lr is None  # the run's method stays
    assert cfg.distill.teacher is None and cfg.distill.alpha == 0.8  # failed before: it distilled from "t" again


@pytest.mark.parametrize("task, method, sets, targets", [
    ("tag", "lora", [], ["all-linear"]),  # measured: bench/DEFAULTS.md
    ("gen", "lora", [], ["all-linear"]),
    ("cls", "lora", [], None),  # peft's per-architecture default (query, value)
    ("mlm", "lora", [], ["all-linear"]),  # the mlm-targets study
    ("tag", "lora", ["method.target_modules=[query]"], ["query"]),  # the user's choice stands
    ("tag", "lora", ["method.target_modules=null"], None),
    ("tag", "dora", [], ["all-linear"]),  # LoRA's, measured for DoRA too
])
def test_lora_targets_default_per_task_where_the_user_left_them_unset(task, method, sets, targets):
    cfg = config.resolve(None, {"task": task, "method": method}, sets)
    assert cfg.method["target_modules"] == targets


def test_options_that_set_a_config_key_say_what_its_field_says():
    """One source for the shared flags: each option of train, distill and prune that sets a config key has that
    field's help (and names the key); the task and method lists in the help are the registries'."""
    import typer.main

    from ftkit.cli import flags
    from ftkit.cli.app import app

    group = typer.main.get_command(app)
    seen = 0
    for verb in ("train", "distill", "prune"):
        for param in group.commands[verb].params:
            key = flags.KEYS.get(param.name)
            if key is None or param.param_type_name != "option":
                continue
            first = config.key_help(key).split(". ")[0].rstrip(".")
            assert param.help.startswith(first) and param.help.endswith(f"[{key}]"), (verb, param.name, param.help)
            seen += 1
    assert seen >= 30
    for key, registry in (("task", TASKS), ("method", METHODS)):
        listed = config.key_help(key).split(": ", 1)[1].split(" (")[0].replace(" or ", ", ").split(", ")
        assert sorted(listed) == registry.names(), key
    assert flags.settings(lr=1e-3, eval_data="e.csv", model="m", seed=None) == {
        "train": {"lr": 1e-3}, "data": {"eval": "e.csv"}, "model": {"name": "m"}}
