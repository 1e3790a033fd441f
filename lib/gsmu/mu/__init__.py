"""Machine Unlearning of Features and Labels (Warnecke et al., NDSS 2023): influence (gradients, HVPs,
inverse-HVP solvers, Sec. 4), unlearn (requests, first/second-order updates, baselines, certification,
Sec. 4–5), poison (label unlearning, Sec. 6.2), canary and exposure (unlearning a secret, Sec. 6.3).
Imports the base, never `gsmu.gs`."""
