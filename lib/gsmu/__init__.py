"""gsmu — reference reproduction of Gradient Slingshots (Bareeva et al., NeurIPS 2025) and Machine Unlearning
of Features and Labels (Warnecke et al., NDSS 2023).

Three floors: `gsmu.base` (shared: runtime, data, models, training + checkpoint cache, profiles, claims,
plots), `gsmu.gs` (activation maximization, the slingshot, its evaluation and audit) and `gsmu.mu`
(influence functions, unlearning updates and baselines, the papers' experiments). The two sides never
import each other.
"""
