"""task: evaluate. The model cards' metrics on a team's own labelled pairs: ranking metrics per
query (:mod:`~crossenc.evaluation.metrics`), classification and similarity metrics over rows,
each with the confidence interval a reader needs to tell a real difference from noise."""
