"""The token-level MDP: environment (``env``), synthetic tasks with gold rewards (``tasks``),
tokenizers (``tokenizer``), the KV-cache sampler (``sampler``), the exact oracle for small tasks
(``oracle``), exact best-of-n (``best_of_n``) and expert demonstrations (``demonstrations``)."""
