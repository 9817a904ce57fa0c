"""Rewards for post-training: preference pairs, reward-model training, one scoring interface for a
reward model / critique judge / math verifier, and EMA smoothing of weights and reward scores."""
