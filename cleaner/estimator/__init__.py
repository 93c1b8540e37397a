"""The estimator: loading open_clip models and local checkpoints (model), batched
normalised embedding of shards (embed), class prompts for zero-shot use
(prompts), and local pre-training of the small demo/benchmark estimator
(pretrain, pretrain_eval)."""
