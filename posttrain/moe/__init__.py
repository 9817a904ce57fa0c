"""Mixture-of-experts specifics shared by the trainers: the recipe (router aux loss, dropout, router freezing), parameter groups and their learning rates, expert load, the tiny MoE for demos."""
