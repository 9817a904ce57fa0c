"""Online rounds for one-stage DPO: sample N answers per prompt from the current policy, score them,
keep the best and worst as a pair, mix with offline pairs. config · sampling · selection · kl ·
mixing · rounds (one round end to end, and the state a resume needs)."""
