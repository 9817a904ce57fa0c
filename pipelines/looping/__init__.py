"""The pieces of `python -m pipelines.loop`: config (LoopConfig), steps (resumable steps), commands
(running one step's command), work (the steps of a loop), table (results.md and charts) and
math_train (verifiable training problems for the online rounds)."""
