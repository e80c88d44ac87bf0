"""Judges of checkpoint samples: does the policy's answer beat the reference model's answer to the same prompt?

`samples.judge` picks one; the sampler asks it at every sampled checkpoint and logs the win rate (1 a win, 0.5 a tie,
0 a loss, averaged over the prompts) with its standard error:

- `task`: the toy task score of each answer (toy data only);
- `reward_model`: a local sequence-classification reward model (`samples.judge_model`, a directory or hub id)
  scores each answer; on toy data without a judge_model, dpo-lab trains and caches one (reward_model.py);
- `pairwise_lm`: a local instruction model (`samples.judge_model`) is asked which of two answers is better, in both
  orders, so a preference for the first (or second) position cancels; the win is its probability for the policy's;
- `sentiment`: VADER's sentiment score of each answer, from -1 to 1 (data=sentiment's reward: sentiment.py).

A judge that scores each answer alone also logs that score of the policy's answer as its `reward`.

At step 0 the policy is the reference and both sample with the same seed, so the answers are equal: every judge
calls that a tie and the win rate starts at 0.5.
"""

import logging
from typing import Any, Dict, List, Optional, Sequence

from dpo_lab.data import as_text
from dpo_lab.samples.metrics import task_score

log = logging.getLogger(__name__)

PAIRWISE_TEMPLATE = (
    "Which answer follows the request better?\n\nRequest:\n{prompt}\n\nAnswer A:\n{a}\n\n"
    "Answer B:\n{b}\n\nReply with one letter: A or B."
)


def resolve(judge: str, judge_model: Optional[str], data_source: str) -> str:
    """samples.judge=auto: the sentiment scorer on data=sentiment, a reward model where there is one (given, or the
    toy one on toy data), else none."""
    if judge != "auto":
        return judge
    if data_source == "sentiment":
        return "sentiment"
    return "reward_model" if judge_model or data_source == "toy" else "none"


class Judge:
    """Scores each answer alone; a win is the higher score. Subclasses implement `scores`."""

    name = "judge"

    def scores(self, prompts: Sequence[Any], answers: Sequence[str], rows: Sequence[Dict[str, Any]]) -> List[float]:
        raise NotImplementedError

    def compare(self, prompts, policy: Sequence[str], reference: Sequence[str], rows) -> List[Dict[str, float]]:
        """Per prompt: the judge's score of each answer (the policy's is its reward) and the policy's win (1, 0.5 for
        a tie, 0)."""
        a, b = self.scores(prompts, policy, rows), self.scores(prompts, reference, rows)
        return [
            {"judge_policy": x, "judge_reference": y, "reward": x, "win": 0.5 if p == r or x == y else float(x > y)}
            for x, y, p, r in zip(a, b, policy, reference)
        ]


class TaskJudge(Judge):
    name = "task"

    def scores(self, prompts, answers, rows):
        return [task_score(a, r["required_words"]) for a, r in zip(answers, rows)]


class SentimentJudge(Judge):
    """VADER's compound score of each answer, from -1 (negative) to 1 (positive): data=sentiment's reward."""

    name = "sentiment"

    def __init__(self):
        from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

        self.analyzer = SentimentIntensityAnalyzer()

    def scores(self, prompts, answers, rows=()):
        return [self.analyzer.polarity_scores(a)["compound"] for a in answers]


class RewardModelJudge(Judge):
    """A sequence-classification reward model's scalar for prompt + answer, formatted as TRL's RewardTrainer trains
    on it: the chat template for conversational prompts, else prompt + answer + EOS."""

    name = "reward_model"

    def __init__(self, path: str, device: str, trust_remote_code: bool = False, batch_size: int = 16):
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
        self.model = (
            AutoModelForSequenceClassification.from_pretrained(path, trust_remote_code=trust_remote_code, num_labels=1)
            .to(device)
            .eval()
        )
        if self.model.config.pad_token_id is None:
            self.model.config.pad_token_id = self.tokenizer.pad_token_id or self.tokenizer.eos_token_id
        self.device, self.batch_size = device, batch_size

    def _ids(self, prompt: Any, answer: str) -> List[int]:
        if not isinstance(prompt, str) and self.tokenizer.chat_template:
            messages = [*prompt, {"role": "assistant", "content": answer}]
            return self.tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True)["input_ids"]
        return self.tokenizer(as_text(prompt) + answer + (self.tokenizer.eos_token or ""))["input_ids"]

    def scores(self, prompts, answers, rows):
        import torch

        ids = [self._ids(p, a) for p, a in zip(prompts, answers)]
        pad, out = self.model.config.pad_token_id, []
        for i in range(0, len(ids), self.batch_size):
            batch = ids[i : i + self.batch_size]
            width = max(map(len, batch))  # right padding: the model scores each row's last non-pad token
            input_ids = torch.tensor([x + [pad] * (width - len(x)) for x in batch], device=self.device)
            mask = torch.tensor([[1] * len(x) + [0] * (width - len(x)) for x in batch], device=self.device)
            with torch.no_grad():
                out += self.model(input_ids=input_ids, attention_mask=mask).logits[:, 0].float().tolist()
        return out


class PairwiseJudge(Judge):
    """A causal LM asked "A or B?" for both orders; the win is the mean of its probabilities for the policy's answer
    (each a softmax over the two letters' next-token logits)."""

    name = "pairwise_lm"

    def __init__(self, path: str, device: str, trust_remote_code: bool = False):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
        self.model = AutoModelForCausalLM.from_pretrained(path, trust_remote_code=trust_remote_code).to(device).eval()
        self.device = device
        self.letters = [self._letter_id(c) for c in "AB"]

    def _letter_id(self, letter: str) -> int:
        ids = self.tokenizer.encode(letter, add_special_tokens=False)
        return ids[0]

    def _prob_first(self, prompt: Any, a: str, b: str) -> float:
        """P(the judge answers A) given answers a (as A) and b (as B)."""
        import torch

        question = PAIRWISE_TEMPLATE.format(prompt=as_text(prompt), a=a, b=b)
        if self.tokenizer.chat_template:
            ids = self.tokenizer.apply_chat_template(
                [{"role": "user", "content": question}], add_generation_prompt=True, return_dict=False
            )
        else:
            ids = self.tokenizer.encode(question + "\nAnswer:", add_special_tokens=True)
        with torch.no_grad():
            logits = self.model(input_ids=torch.tensor([ids], device=self.device)).logits[0, -1, self.letters].float()
        return torch.softmax(logits, dim=-1)[0].item()

    def compare(self, prompts, policy, reference, rows):
        out = []
        for prompt, p, r in zip(prompts, policy, reference):
            win = 0.5 if p == r else (self._prob_first(prompt, p, r) + 1 - self._prob_first(prompt, r, p)) / 2
            out.append({"judge_policy": win, "judge_reference": 1 - win, "win": win})
        return out


def load(kind: str, judge_model: Optional[str], device: str, trust_remote_code: bool = False) -> Optional[Judge]:
    """The judge `kind` names (after `resolve`), on `device`; None for `none`."""
    if kind == "none":
        return None
    if kind == "task":
        return TaskJudge()
    if kind == "sentiment":
        return SentimentJudge()
    log.info("Samples judge: %s %s", kind, judge_model)
    if kind == "reward_model":
        return RewardModelJudge(judge_model, device, trust_remote_code)
    return PairwiseJudge(judge_model, device, trust_remote_code)


def judge_kind(cfg) -> str:
    """The judge a run's samples get (config.Judge, after auto); none when there are no samples."""
    return resolve(cfg.samples.judge, cfg.samples.judge_model, cfg.data.source) if cfg.samples.count else "none"
