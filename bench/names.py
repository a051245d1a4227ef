"""The names the command line accepts. Torch-free, so that `python -m bench --help` and a
mistyped flag answer before torch is imported; bench/impls.py and bench/cases.py build their
tables from these same tuples (tests/test_bench.py checks that they agree)."""

OPTIMIZERS = ("AdamW", "Adam", "Adai", "AdaiW", "AdaMomentum", "InvAdam", "DualAdam", "Lion")
OUR_BACKENDS = ("cpu", "cuda", "triton", "torch")
PEERS = ("fused", "foreach", "compiled", "authors", "pytorch_optimizer", "te")
DTYPES = ("fp32", "bf16", "fp16")
STATE_DTYPES = ("fp32", "bf16")
FAMILIES = ("large", "llama", "small", "resnet")
# --precision: how our classes keep bf16/fp16 params, and the suffix of their rows
PRECISION_MODES = {"master_weights": "+mw", "param_remainders": "+rem", "stochastic_rounding": "+sr"}
RATIO_PEER = "AdamW"  # torch.optim's AdamW is the peer of every optimizer but Adam
