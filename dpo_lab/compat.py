"""Shims for the range of library versions dpo-lab supports (pyproject's bounds, tested by ci/min-versions.txt)."""

from typing import Any, Dict


def checkpointing_arg(on: bool) -> Dict[str, Any]:
    """The TrainingArguments field for activation checkpointing: transformers renamed `gradient_checkpointing` to
    `activation_checkpointing` after 5.17 and warns on the old name, which 5.17 alone knows."""
    from transformers import TrainingArguments  # every method's TRL config derives from it

    fields = TrainingArguments.__dataclass_fields__
    name = "activation_checkpointing" if "activation_checkpointing" in fields else "gradient_checkpointing"
    return {name: on}


def quiet_known_warnings() -> None:
    """Silence a warning the user can do nothing about. transformers deprecates `model.is_gradient_checkpointing`
    with a FutureWarning; TRL 1.16 reads it on every loss computation (trl/models/utils.py,
    disable_gradient_checkpointing), PEFT once when it wraps a LoRA model. Python prints it once per location, but the
    Trainer's checkpoint save enters warnings.catch_warnings, which resets that record: it came back every save."""
    import warnings

    warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)
