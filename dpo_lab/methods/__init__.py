"""Preference methods: one module per method here, each holding a `Method` record (base.py), and one
config file per method in conf/method/. The rest of dpo-lab asks the chosen method's record instead of assuming DPO;
only this package names TRL's trainer classes (tests/test_structure.py checks it)."""

import importlib
from typing import Tuple

from dpo_lab.errors import UserError
from dpo_lab.methods.base import Method

NAMES = ("dpo", "simpo", "cpo", "alphapo", "orpo", "kto")


def get(name: str) -> Method:
    return importlib.import_module(f"dpo_lab.methods.{name}").METHOD


def trl_classes(method: Method) -> Tuple[type, type]:
    """(config class, trainer class) of the method, imported now."""
    import warnings

    import trl

    try:
        with warnings.catch_warnings():  # trl.experimental says once that it is experimental; the method's docs say so
            warnings.filterwarnings("ignore", message=".*experimental.*", category=UserWarning)
            module = importlib.import_module(method.trl_module)
        return getattr(module, method.config_class), getattr(module, method.trainer_class)
    except (ImportError, AttributeError) as e:
        raise UserError(
            f"method={method.name} needs {method.trl_module}.{method.trainer_class}, which trl "
            f"{trl.__version__} lacks ({e}). dpo-lab's methods are tested with trl 1.16, which has it"
            f"{' (under trl.experimental: TRL may move it in any release)' if method.experimental else ''}: "
            "pip install 'trl==1.16.*'."
        ) from None


def settings(method: Method, cfg) -> str:
    """The method's own settings in one short string for reports: β, its TRL loss type, its parameters."""
    args = method.args(cfg)
    loss = args.get("loss_type")
    shown = {
        "beta": args["beta"],
        "loss": "+".join(loss) if isinstance(loss, list) else loss,
        **{p: args[p] for p in method.params},
    }
    return " ".join(f"{k}={v}" for k, v in shown.items() if v is not None)


def check_data(method: Method, shape: str, source: str) -> None:
    """UserError unless the method trains on `shape` rows (data.Preferences.shape)."""
    if shape not in method.data:
        takers = [n for n in NAMES if shape in get(n).data]
        raise UserError(
            f"method={method.name} trains on pairs (prompt, chosen, rejected); {source} holds unpaired rows "
            f"(prompt, completion, label), which only method={' or method='.join(takers)} takes."
        )
