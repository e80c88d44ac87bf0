"""Config fuzzer (issue 25): seeded, property-based (hypothesis) command lines over every typed config field, every
group option and trainer.extra, through the preflight a run gets: `check_command_line` (composition), then
`check_job` (validate, the method's TRL config, optimizer and schedule built on the CPU, data files, the model
checks). Each generated config must end in exactly one of:
- a UserError, one paragraph (what preflight prints, exit 2), or
- a pass, after which the job's TRL config and LoRA config build;
never another exception. Seeded and bounded, so every run tries the same configs.

    python -m pytest -q -s tests/reliability/test_config_fuzz.py    # prints the tally docs/reliability.md quotes
"""

import collections
import dataclasses
import math
import os
import traceback
import typing
from enum import Enum
from pathlib import Path

import pytest
from helpers import CONF, TINY, tiny_toy
from omegaconf import OmegaConf

from dpo_lab.config import Config

hypothesis = pytest.importorskip("hypothesis")
st = pytest.importorskip("hypothesis.strategies")

EXAMPLES = int(os.environ.get("CONFIG_FUZZ_EXAMPLES", 300))
# Group options: every file of these conf/ groups (experiment=tiny is the base; sweeps and launchers are not a job's).
GROUPS = {g: sorted(p.stem for p in (CONF / g).glob("*.yaml")) for g in ("method", "loss", "model", "data", "peft")}
GROUPS.update(trainer=["default", "gpu"], samples=sorted(p.stem for p in (CONF / "samples").glob("*.yaml")))
ODD_TEXT = ["", " ", "..", "../x", "a/b", "{", "{prompt}", "Q: {prompt} {", "${oc.env:HOME}", "ünï", "x" * 300]
ODD_NUMBERS = [0, -1, 1, 2, 2**31, 2**32, -(2**63), 10**30]
ODD_FLOATS = [0.0, -0.0, -1.0, 1e-12, 0.5, 1.0, 1.5, 1e30, math.inf, -math.inf, math.nan]


def leaves(schema=Config, prefix=""):
    """(dotted key, type) of every leaf field of the typed config."""
    hints = typing.get_type_hints(schema)
    for f in dataclasses.fields(schema):
        kind = hints[f.name]
        if dataclasses.is_dataclass(kind):
            yield from leaves(kind, f"{prefix}{f.name}.")
        else:
            yield f"{prefix}{f.name}", kind


def values_of(kind, key: str, paths):
    """A strategy of values for a field of type `kind`: its default first (the simplest example hypothesis tries),
    then plausible values, then odd ones (that is the point)."""
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if key in ("model.path", "samples.judge_model", "data.train_file", "data.eval_file"):
        return st.sampled_from(paths)  # local paths only: a hub id would reach for the network
    if origin is typing.Union:  # Optional[X]
        return st.none() | st.one_of([values_of(a, key, paths) for a in args if a is not type(None)])
    default = OmegaConf.select(DEFAULTS, key) if key else None
    default = default.value if isinstance(default, Enum) else default
    if isinstance(kind, type) and issubclass(kind, Enum):
        return st.sampled_from([m.value for m in kind] + ["bogus"])
    if kind is bool:
        return st.booleans() | st.sampled_from(["maybe", 2])
    if kind is int:
        odd = st.integers(-(2**40), 2**40) | st.sampled_from(ODD_NUMBERS)
        return st.one_of(st.just(default) if isinstance(default, int) else st.nothing(), st.integers(1, 64), odd)
    if kind is float:
        odd = st.floats(allow_nan=True, allow_infinity=True) | st.sampled_from(ODD_FLOATS)
        return st.one_of(st.just(default) if isinstance(default, float) else st.nothing(), st.floats(1e-4, 1), odd)
    if kind is str:
        odd = st.sampled_from(ODD_TEXT) | st.text(max_size=8)
        return st.one_of(st.just(default) if isinstance(default, str) else st.nothing(), odd)
    if origin in (list, typing.List):
        return st.lists(values_of(args[0], "", paths), max_size=4)
    if origin in (dict, typing.Dict):
        return st.dictionaries(st.sampled_from(["low", "mid", "high", "x"]), values_of(args[1], "", paths), max_size=3)
    return st.sampled_from(["all-linear", ["q_proj", "v_proj"], ["nonexistent"], "q_proj|k_proj", 3, None])  # Any


def extra_fields():
    """Field names trainer.extra may try: every DPOConfig field, and a few it does not have."""
    from trl import DPOConfig

    return sorted(DPOConfig.__dataclass_fields__) + ["not_a_field", "lerning_rate"]


def hydra_value(value) -> str:
    """`value` in Hydra's override grammar (strings quoted and escaped)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf") if math.isinf(value) else repr(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(hydra_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ",".join(f"{k}:{hydra_value(v)}" for k, v in value.items()) + "}"
    return "'" + str(value).replace("\\", "\\\\").replace("'", "\\'") + "'"


@st.composite
def command_lines(draw, paths):
    """experiment=tiny, some group options, some typed keys and some trainer.extra fields, as a user types them."""
    overrides = [TINY]
    for group, options in GROUPS.items():
        if draw(st.integers(0, 5)) == 0:
            overrides.append(f"{group}={draw(st.sampled_from(options))}")
    fields = draw(st.lists(st.sampled_from(LEAVES), min_size=1, max_size=2, unique_by=lambda f: f[0]))
    for key, kind in fields:
        if key in SKIP:
            continue
        overrides.append(f"{key}={hydra_value(draw(values_of(kind, key, paths)))}")
    for name in draw(st.lists(st.sampled_from(EXTRA), min_size=draw(st.integers(0, 1)), max_size=2, unique=True)):
        value = draw(st.sampled_from([0, 1, -1, 0.5, True, "x", "linear", None, [1, 2], math.inf]))
        overrides.append(f"+trainer.extra.{name}={hydra_value(value)}")
    return overrides


# Keys whose value is a whole-run switch rather than a setting: checked elsewhere (sweep-level, or not by preflight).
SKIP = {"preflight_only", "results_dir", "trainer.extra"}
LEAVES = [f for f in leaves() if f[0] not in SKIP]
DEFAULTS = OmegaConf.structured(Config)
EXTRA = extra_fields()


def run_preflight(overrides, seen):
    """What run.py does before a run starts; then what the job builds from a config that passed."""
    from dpo_lab.memory import fixed_batch
    from dpo_lab.modeling import lora_config
    from dpo_lab.precision import resolve
    from dpo_lab.sweeps.preflight import check_command_line, check_job
    from dpo_lab.trainer_args import build

    cfg = check_command_line(overrides)  # the config run.py's Hydra would compose
    check_job(cfg, seen)
    build(cfg, "/job", "cpu", resolve("fp32", "cpu"), False, fixed_batch(cfg.trainer))
    if cfg.peft.enabled:
        lora_config(cfg.peft)


@pytest.mark.e2e
def test_config_fuzz(tmp_path):
    from dpo_lab.config import register_configs
    from dpo_lab.errors import UserError

    register_configs()
    tiny_toy()  # the model checks read the toy model's config and tokenizer
    (tmp_path / "empty_dir").mkdir()
    (tmp_path / "prefs.jsonl").write_text('{"prompt": "p", "chosen": "a", "rejected": "b"}\n' * 40)
    paths = [
        str(tmp_path / "prefs.jsonl"),
        str(tmp_path / "empty_dir"),
        "/nonexistent/x",
        str(Path(CONF) / "config.yaml"),
    ]
    paths.append(os.path.dirname(tiny_toy()["model"]) + "/model")
    tally, reasons, problems, seen = collections.Counter(), collections.Counter(), [], {}

    @hypothesis.settings(
        max_examples=EXAMPLES,
        deadline=None,
        derandomize=True,  # seeded: every run tries the same configs
        database=None,
        suppress_health_check=list(hypothesis.HealthCheck),
        phases=[hypothesis.Phase.generate],  # no shrinking: a problem is reported with its whole command line
    )
    @hypothesis.given(command_lines(paths))
    def one(overrides):
        try:
            run_preflight(overrides, seen)
            tally["passed and built"] += 1
        except UserError as e:
            tally["clear errors"] += 1
            reasons[str(e)[:70]] += 1
            if os.environ.get("CONFIG_FUZZ_SHOW") and os.environ["CONFIG_FUZZ_SHOW"] in str(e):
                print(" ".join(overrides), "->", e)
        except Exception:
            problems.append((overrides, traceback.format_exc()))

    one()
    print(
        f"\nconfig fuzz: {sum(tally.values())} configs, {tally['clear errors']} clear errors, "
        f"{tally['passed and built']} passed and built, {len(problems)} problems"
    )
    print("most common refusals:", *(f"  {n} x {r}" for r, n in reasons.most_common(8)), sep="\n")
    assert not problems, "\n\n".join(f"python run.py {' '.join(o)}\n{why}" for o, why in problems[:5])
    assert tally["passed and built"] > EXAMPLES // 20 and tally["clear errors"] > EXAMPLES // 2  # both paths tried
