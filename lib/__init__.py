"""Reference reproduction of two ML-security papers.

- Gradient Slingshots (Bareeva et al., NeurIPS 2025): `featvis` (activation maximization), `slingshot`
  (the manipulation), `metrics` (how well it lands and what it costs).
- Machine Unlearning of Features and Labels (Warnecke et al., NDSS 2023): `influence` (gradients,
  Hessian-vector products, inverse-HVP solvers), `unlearn` (first/second-order updates, baselines).

Shared plumbing: `data` (offline-first real data with checksums), `models` (the papers' architectures),
`train` (training with a checkpoint cache), `runtime` (profiles, device, seeds, paths), `claims`
(comparisons with the papers), `plots` (figures).
"""
