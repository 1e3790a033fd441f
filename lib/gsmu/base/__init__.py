"""The shared base of both papers: runtime (profiles, device, seeds, paths, parameter checks), data
(offline-first real data with checksums), models (the papers' architectures), train (training with a
checkpoint cache), profiles (each experiment's quick/paper settings), claims (typed comparisons with the
papers), plots (figures). Imports neither paper's side."""
