"""The offline toy task: generated preference data and a tiny Llama (task.py), its warm-up (sft.py) and
the toy reward model that judges its answers (reward_model.py). Built once into the cache; optional for real models."""
