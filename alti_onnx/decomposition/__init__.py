"""The math of docs/alti.md on one example's block tensors: each block kind's decomposition, the
distance kernel, the self-check, the rollout and ALTI+. Knows no files, sessions or graphs."""
