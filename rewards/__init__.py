"""Rewards: the scoring layer. One interface (`score(prompts, responses, references) -> floats`) for
a reward model (reward_model.py), an LLM critique judge (judge.py) and verifiers (math_verifier.py, code_verifier.py); pairwise judging of two models (pairwise.py);
reward normalisation (normalize.py); `build_scorer` picks one from config (scoring.py).

Nothing here runs an optimizer: training reward models, refreshing them between online rounds and
EMA of weights are post-training (posttrain/). This package imports only datagen."""
