"""Online rounds for one-stage DPO: sample N answers per prompt from the current policy, score them,
keep the best and worst as a pair, mix with offline pairs. config · sampling · selection · kl ·
mixing · prompts · rounds (one round end to end, and the state a resume needs) · feed (how a round's
rows reach the one trainer) · engine, weights, vllm_worker (the run's live vLLM engine and how the
policy's weights get into it)."""
