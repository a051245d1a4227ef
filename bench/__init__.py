"""Benchmarks of fused_optim against torch.optim and the authors' per-tensor loops.
Run `python -m bench` from the repository root; see bench/README.md."""
