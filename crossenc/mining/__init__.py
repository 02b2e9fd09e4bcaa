"""task: mine. Training data from a candidate log: every (query, candidate) pair scored by the
teacher (a model, or the mean of several), and hard negatives chosen per query as
sentence-transformers' ``mine_hard_negatives`` chooses them (:mod:`~crossenc.mining.negatives`),
in the formats its trainers read."""
