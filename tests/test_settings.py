"""One source per setting: a default lives in dpo_lab/config.py, and a conf/ group file sets only what its option
changes. A group file repeating a default would hide an edit of that default (conf/trainer/default.yaml once
repeated all eight of TrainerConfig's)."""

from pathlib import Path

import pytest
from omegaconf import OmegaConf

CONF = Path(__file__).resolve().parents[1] / "conf"
GROUPS = ("data", "loss", "method", "model", "peft", "samples", "trainer")  # presets (experiment/, sweep/) may repeat
# Keys that name what an option is: they stay even where the option is the schema's default one.
IDENTITY = {"data.source", "model.source", "loss.loss_type", "peft.enabled", "method.name"}
# A method file comes after the experiment in the defaults list and states its own β and β grid in full.
METHOD_OWN = ("beta", "method.beta_grid.")


def _set_keys(node, prefix=""):
    for key, value in node.items():
        if key == "defaults":
            continue
        if isinstance(value, dict):
            yield from _set_keys(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def _files():
    yield CONF / "config.yaml", ""
    for group in GROUPS:
        for path in sorted((CONF / group).glob("*.yaml")):
            text = path.read_text(encoding="utf-8")
            yield path, "" if "@package _global_" in text else f"{group}."


@pytest.mark.parametrize(
    "path, prefix", list(_files()), ids=lambda x: str(x.relative_to(CONF)) if isinstance(x, Path) else None
)
def test_a_group_file_sets_only_what_differs_from_the_schema(path, prefix):
    from dpo_lab.config import Config

    schema = OmegaConf.structured(Config)
    node = OmegaConf.to_container(OmegaConf.create(path.read_text(encoding="utf-8")))  # OmegaConf reads 5e-5 as a float
    node.pop("hydra", None)
    repeats = [
        key
        for key, value in _set_keys(node, prefix)
        if OmegaConf.select(schema, key, default=object()) == value
        and key not in IDENTITY
        and not (path.parent.name == "method" and key.startswith(METHOD_OWN))
    ]
    assert not repeats, f"{path.relative_to(CONF)} repeats the defaults of dpo_lab/config.py for {repeats}: drop them"
