"""Gradient Slingshots (Bareeva et al., NeurIPS 2025): featvis (activation maximization, Sec. 3), slingshot
(the manipulation, Sec. 4), metrics (evaluation and the audit, Sec. 5–6). Imports the base, never `gsmu.mu`."""
