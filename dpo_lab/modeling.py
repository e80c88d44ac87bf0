"""Model side: which device, which checkpoint and tokenizer, and the LoRA adapter config."""

import logging
import os
import pickle
from typing import Optional

from dpo_lab.errors import UserError

log = logging.getLogger(__name__)


def pick_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise UserError("trainer.device=cuda but no CUDA device is visible. Use trainer.device=auto (or cpu).")
    return device


def load_tokenizer(path: str, revision: Optional[str] = None, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(path, revision=revision, trust_remote_code=trust_remote_code)
    except Exception as e:  # a missing or malformed tokenizer file surfaces as OSError, ValueError, KeyError...
        reason = " ".join(str(e).split()).rstrip(".")  # transformers' messages span lines: keep one paragraph
        raise UserError(
            f"Cannot load the tokenizer of {path!r}: {type(e).__name__}: {reason}. A checkpoint needs "
            "the tokenizer files save_pretrained writes (tokenizer.json and tokenizer_config.json): save "
            "the tokenizer beside the model (tokenizer.save_pretrained(DIR)), or for a hub id check the "
            "id and internet access."
        ) from None
    if tok.pad_token is None:  # many causal LMs ship without one; TRL needs it for batching
        tok.pad_token = tok.eos_token
    return tok


def check_model_path(path: Optional[str], key: str = "model.path") -> str:
    """`path` (the value of config key `key`) as a local directory or hub id, or a UserError saying what is wrong."""
    if not path:
        raise UserError(
            "model=hf needs model.path: a local checkpoint directory or a hub id, "
            "e.g. model=hf model.path=/ckpt/my-sft-model."
        )
    expanded = os.path.expanduser(path)
    if os.path.isfile(expanded):
        raise UserError(
            f"{key}={path!r} is a file; {key} takes the directory that save_pretrained wrote (config.json, the "
            f"weights and the tokenizer files), e.g. {key}={os.path.dirname(path) or '.'} if that is the one."
        )
    if path.startswith(("/", ".", "~")) and not os.path.isdir(expanded):
        raise UserError(
            f"{key}={path!r} does not exist. Point it at a directory holding config.json and the "
            "weights (a save_pretrained checkpoint), or at a hub id such as Qwen/Qwen2.5-0.5B."
        )
    if os.path.isdir(expanded) and not os.path.isfile(os.path.join(expanded, "config.json")):
        raise UserError(
            f"{key}={path!r} is a directory without config.json, so it is not a Hugging Face "
            "checkpoint. Point it at the directory that save_pretrained wrote."
        )
    if os.path.isdir(expanded):
        _check_model_config(os.path.join(expanded, "config.json"), key)
    return expanded


def _check_model_config(config_file: str, key: str) -> None:
    """transformers reads config.json first and fails on it with a traceback: check it here, at preflight."""
    import json

    fix = f"Restore it from the original checkpoint (save_pretrained writes it), or point {key} at a whole one."
    try:
        with open(config_file, encoding="utf-8") as f:
            config = json.load(f)
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"{config_file} (the config.json of {key}) cannot be read: {e}. {fix}") from None
    except ValueError as e:
        raise UserError(f"{config_file} (the config.json of {key}) is not valid JSON ({e}). {fix}") from None
    if not isinstance(config, dict) or not (config.get("model_type") or config.get("auto_map")):
        # transformers 5 needs model_type to pick the architecture (auto_map: a remote-code model names its own)
        raise UserError(
            f"{config_file} (the config.json of {key}) has no model_type, so transformers cannot tell "
            f"which architecture it is. {fix}"
        )


def meta_model(path: str, cfg):
    """(config, model) of checkpoint `path` built on the meta device from its config.json: shapes, no weights."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(path, revision=cfg.revision, trust_remote_code=cfg.trust_remote_code)
    with torch.device("meta"):
        return config, AutoModelForCausalLM.from_config(config, trust_remote_code=cfg.trust_remote_code)


def _read_config(path: str, key: str, revision=None, trust_remote_code: bool = False):
    """The checkpoint's config, or None for a hub id this machine cannot reach now (the job says so when it loads);
    UserError naming `key` for a local dir transformers cannot read."""
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(path, revision=revision, trust_remote_code=trust_remote_code)
    except Exception as e:
        if not os.path.isdir(path):
            return None
        raise UserError(
            f"{key}={path!r}: transformers cannot read its config.json ({type(e).__name__}: {e})."
        ) from None


def _causal(config) -> bool:
    """Whether `config` is a decoder-only causal LM's: by its listed classes, else by its model type."""
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
        MODEL_FOR_MASKED_LM_MAPPING_NAMES,
    )

    causal = {c for names in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values() for c in _names(names)}
    archs = list(config.architectures or [])
    listed = (
        any(a in causal or a.endswith(("ForCausalLM", "LMHeadModel")) for a in archs)
        if archs
        else config.model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES or "AutoModelForCausalLM" in (config.auto_map or {})
    )
    # BERT and its kin have a causal-LM class too, which is only a decoder with is_decoder=true
    encoder = config.model_type in MODEL_FOR_MASKED_LM_MAPPING_NAMES and not getattr(config, "is_decoder", False)
    return listed and not encoder and not config.is_encoder_decoder


def _what(config) -> str:
    return "/".join(config.architectures or []) or config.model_type


def check_model(path: str, cfg, peft, tokenizer=None, key: str = "model.path") -> None:
    """What loading and wrapping the model would get wrong, from its config alone: it must be a causal LM (an
    encoder such as BERT loads as one and trains to nonsense), its embedding must cover the tokenizer, its attention
    implementation must exist, and LoRA must find its target modules. A hub id this machine cannot reach now is
    left to the job, which says so."""
    config = _read_config(path, key, cfg.revision, cfg.trust_remote_code)
    if config is None:
        return
    if not _causal(config):
        raise UserError(
            f"{key}={path!r} is a {_what(config)} checkpoint, not a decoder-only causal language model (a "
            "...ForCausalLM class), and DPO trains a model that writes its answers token by token: an encoder or "
            "encoder-decoder would load with a new, untrained head and train to nonsense. Point "
            f"{key} at a causal LM (e.g. a Llama, Qwen, GPT-2 or SmolLM checkpoint)."
        )
    vocab = config.get_text_config().vocab_size
    if tokenizer is not None and vocab and len(tokenizer) > vocab:
        raise UserError(
            f"{key}={path!r}: its tokenizer has {len(tokenizer)} tokens, but the model's embedding has {vocab} rows, "
            f"so a token id >= {vocab} would index past it. Save the tokenizer the model was trained with beside it, "
            "or resize the embedding (model.resize_token_embeddings(len(tokenizer))) and save_pretrained both."
        )
    _check_attention(cfg.attn_implementation)
    if peft.enabled:
        from peft import get_peft_model

        _, model = meta_model(path, cfg)
        try:
            get_peft_model(model, lora_config(peft))
        except Exception as e:
            import torch

            linear = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)})
            raise UserError(
                f"peft.target_modules={_plain(peft.target_modules)}: peft cannot put LoRA on {path} "
                f"({type(e).__name__}: {' '.join(str(e).split())}). Its linear layers are named {linear}: use "
                "peft.target_modules=all-linear or a list of those names."
            ) from None


def _check_attention(name) -> None:
    """model.attn_implementation must name one of transformers' attention functions (whether its kernel runs on the
    job's GPU is for the job to find), or a hub kernel (org/repo)."""
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    known = ["eager", *ALL_ATTENTION_FUNCTIONS.valid_keys()]
    if name and name not in known and not name.startswith("paged|") and "/" not in name:
        raise UserError(
            f"model.attn_implementation={name} is not an attention implementation transformers has: use one of "
            f"{', '.join(known)}, or leave it unset (transformers picks sdpa)."
        )


def check_judge_model(path: str, kind: str, trust_remote_code: bool = False) -> None:
    """samples.judge_model must be what its judge loads it as: a reward model with one score for reward_model (a
    causal LM would get a new, untrained score head, and its win rates would be noise), a causal LM for
    pairwise_lm."""
    key = "samples.judge_model"
    config = _read_config(path, key, trust_remote_code=trust_remote_code)
    if config is None:
        return
    if kind == "reward_model":
        scores = any(a.endswith("ForSequenceClassification") for a in config.architectures or [])
        if not scores or config.num_labels != 1:
            outputs = f" with {config.num_labels} outputs" if scores else ""
            raise UserError(
                f"{key}={path!r} is a {_what(config)} checkpoint{outputs}, not a reward model (a "
                "...ForSequenceClassification with one score): the reward_model judge would load it with a "
                "new, untrained score head, and the win rates would be noise. Point it at a reward model (TRL's "
                "RewardTrainer saves one), or use samples.judge=pairwise_lm for an instruction-tuned causal LM."
            )
    elif kind == "pairwise_lm" and not _causal(config):
        raise UserError(
            f"{key}={path!r} is a {_what(config)} checkpoint, not a causal LM: samples.judge=pairwise_lm asks a "
            "causal LM which answer is better. Point it at an instruction-tuned causal LM, or use "
            "samples.judge=reward_model for a reward model."
        )


def _names(names):
    return (names,) if isinstance(names, str) else tuple(names)


def _plain(value):
    from omegaconf import OmegaConf

    return OmegaConf.to_container(value) if OmegaConf.is_config(value) else value


def load_model(path: str, cfg, dtype: str):
    """Load a causal LM in `dtype` (precision.py's choice, whatever the checkpoint was saved in), with a clear error
    when that fails."""
    import torch
    from transformers import AutoModelForCausalLM

    # No use_safetensors: transformers 5 loads model.safetensors whenever a checkpoint has it, and a .bin-only one
    # with torch.load(weights_only=True), which runs no pickled code. Remote code runs only with
    # model.trust_remote_code.
    kwargs = dict(revision=cfg.revision, trust_remote_code=cfg.trust_remote_code, dtype=getattr(torch, dtype))
    if cfg.attn_implementation:
        kwargs["attn_implementation"] = cfg.attn_implementation
    from safetensors import SafetensorError

    try:
        return AutoModelForCausalLM.from_pretrained(path, **kwargs)
    except SafetensorError as e:  # found only when the weights load: preflight reads config.json alone
        raise UserError(
            f"The weights of {path!r} cannot be read (safetensors: {e}): the file is damaged or cut off, e.g. by a "
            "full disk or an interrupted copy. Copy or save the checkpoint again (save_pretrained), or point "
            "model.path at an intact one."
        ) from None
    except pickle.UnpicklingError as e:
        raise UserError(
            f"Model {path!r} has its weights in a pickle (.bin) that holds more than tensors, and loading it "
            f"would run that code (torch: {str(e).split('. ')[0]}). dpo-lab runs no code from checkpoints: where "
            "you trust the file, convert it to safetensors (load it and save_pretrained(DIR) writes "
            "model.safetensors) and point model.path at DIR."
        ) from None
    except (OSError, ValueError) as e:
        raise UserError(
            f"Cannot load model {path!r}: {e}. For a hub id this needs internet access; otherwise "
            "point model.path at a local checkpoint directory."
        ) from None


def lora_config(cfg):
    from peft import LoraConfig

    target = cfg.target_modules if isinstance(cfg.target_modules, str) else list(cfg.target_modules)
    return LoraConfig(
        task_type="CAUSAL_LM", r=cfg.r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout, target_modules=target
    )
