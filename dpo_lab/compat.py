"""Shims for the range of library versions dpo-lab supports (pyproject's bounds, tested by ci/min-versions.txt)."""

from typing import Any, Dict


def checkpointing_arg(on: bool) -> Dict[str, Any]:
    """The TrainingArguments field for activation checkpointing: transformers renamed `gradient_checkpointing` to
    `activation_checkpointing` after 5.17 and warns on the old name, which 5.17 alone knows."""
    from trl import DPOConfig

    name = "activation_checkpointing" if "activation_checkpointing" in DPOConfig.__dataclass_fields__ else "gradient_checkpointing"
    return {name: on}
