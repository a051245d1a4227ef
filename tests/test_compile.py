"""torch.compile: the optimizer step traces into one graph (fullgraph=True, no breaks), gives
bitwise the eager result, does not recompile from step to step, and every custom op passes
torch.library.opcheck. On CPU tensors: the torch and cpu backends, and triton under its
interpreter (whose operators test_triton_backend.py opchecks)."""
import pytest
import torch
import torch._dynamo
import torch._dynamo.testing

from fused_optim import _compat, backends, operations
from fused_optim.registry import OPTIMIZERS

from .helpers import CPU_BACKENDS, grads_for, make_params, needs_compiled_step

BACKENDS = CPU_BACKENDS


@pytest.fixture(autouse=True)
def fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _pair(name, backend, lr=None):
    spec = OPTIMIZERS[name]
    kwargs = dict(spec.cases["default"])
    if lr is not None:
        kwargs["lr"] = lr
    twins = []
    for _ in range(2):
        params = make_params("views", torch.float32)  # a transposed and a misaligned param
        twins.append((params, spec.cls(params, **kwargs, backend=backend)))
    return twins


def _set_grads(params, step):
    for p, g in zip(params, grads_for(params, step)):
        p.grad = g


def _assert_same(opt_a, params_a, opt_b, params_b):
    for p, q in zip(params_a, params_b):
        assert torch.equal(p, q)
        for key, value in opt_a.state[p].items():
            assert torch.equal(value, opt_b.state[q][key]), key
    if hasattr(opt_a, "global_step"):
        assert opt_a.global_step == opt_b.global_step


@needs_compiled_step
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_compiled_step_is_one_graph_and_equals_eager(name, backend):
    (params, opt), (eager_params, eager_opt) = _pair(name, backend)
    counter = torch._dynamo.testing.CompileCounterWithBackend("aot_eager")
    compiled_step = torch.compile(opt.step, backend=counter, fullgraph=True)
    compiled_before = 0
    for step in range(1, 7):
        if step == 5:
            # a new lr compiles the step once more (a float hyperparameter is a constant of
            # the graph, as in torch.optim), and the result follows it
            for o in (opt, eager_opt):
                for group in o.param_groups:
                    group["lr"] = group["lr"] * 0.5
        _set_grads(params, step)
        _set_grads(eager_params, step)
        compiled_step()
        eager_opt.step()
        _assert_same(opt, params, eager_opt, eager_params)
        # one graph before the state exists, one after it (and one for the new lr)
        if step in (3, 4, 6):
            # nothing compiles from step to step (only for a new state or a new lr)
            assert counter.frame_count == compiled_before, (step, counter.frame_count)
        compiled_before = counter.frame_count


def _compiled_loop_against_eager(step, params, opt, eager_params, eager_opt):
    """Three calls of a compiled function that calls `step` (opt's step, maybe wrapped), each
    checked against an eager step of the twin; returns the compile counter."""
    counter = torch._dynamo.testing.CompileCounterWithBackend("aot_eager")

    def train_step():
        step()
        return params[0].sum()

    compiled = torch.compile(train_step, backend=counter)
    for number in range(1, 4):
        _set_grads(params, number)
        _set_grads(eager_params, number)
        compiled()
        eager_opt.step()
        _assert_same(opt, params, eager_opt, eager_params)
    return counter


@pytest.mark.parametrize("backend", [b for b in BACKENDS if b != "triton"])
@pytest.mark.parametrize("name", ["AdamW", "Adai"])
def test_a_compiled_training_loop_equals_eager_on_every_torch(name, backend):
    """Without fullgraph, on any supported torch: from 2.6 the step is traced, before it dynamo
    runs it eagerly (_compat.py). Either way the result is bitwise eager's."""
    (params, opt), (eager_params, eager_opt) = _pair(name, backend)
    counter = _compiled_loop_against_eager(opt.step, params, opt, eager_params, eager_opt)
    if not _compat.STEP_COMPILES:
        # the step stayed out of every graph: none holds one of our operators
        assert counter.op_count <= 3, counter.op_count


def test_a_step_kept_out_of_the_graph_equals_eager(monkeypatch):
    """The fallback of torch < 2.6 exercised on this torch: a step wrapped as _compat wraps it
    there runs eagerly inside a compiled function (no operator of ours in the graph)."""
    monkeypatch.setattr(_compat, "STEP_COMPILES", False)
    (params, opt), (eager_params, eager_opt) = _pair("AdamW", BACKENDS[0])
    # a function of its own: torch 2.4's disable() of a bound method of an already disabled
    # function (the class's step there) unwraps it and drops self
    eager_only_step = _compat.eager_under_compile_before_2_6(lambda: opt.step())
    counter = _compiled_loop_against_eager(eager_only_step, params, opt, eager_params, eager_opt)
    assert counter.frame_count >= 1 and counter.op_count <= 3, (counter.frame_count, counter.op_count)


@needs_compiled_step
@pytest.mark.parametrize("name", ["AdamW", "Adai"])
def test_training_step_with_inductor_has_no_graph_break(name):
    """Forward, backward and our step in ONE compiled function, through inductor."""
    if not hasattr(torch._dynamo.config, "trace_autograd_ops"):
        pytest.skip("this torch cannot trace .backward() inside a compiled function")
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 4))
    opt = OPTIMIZERS[name].cls(model.parameters(), **OPTIMIZERS[name].cases["default"])
    x, y = torch.randn(32, 8), torch.randn(32, 4)

    def train_step():
        loss = torch.nn.functional.mse_loss(model(x), y)
        loss.backward()
        opt.step()
        return loss.detach()

    with torch._dynamo.config.patch(trace_autograd_ops=True):
        compiled = torch.compile(train_step, fullgraph=True)
        losses = []
        for _ in range(5):
            losses.append(float(compiled()))
            opt.zero_grad()
    assert all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < losses[0]  # it trains


# example values of the arguments that no optimizer's hyper() gives
_SCALARS = {"global_step": (3.0, torch.float64), "vbar": (0.015, torch.float64), "grad_scale": (4.0, torch.float32),
            "found_inf": (0.0, torch.float32)}
_EXTRA_HYPER = {"norm_type": 2.0}


def _user_of(function):
    """An optimizer of the registry that runs this operation, with its last (least default) case."""
    for spec in OPTIMIZERS.values():
        if spec.cls.operation == function or (spec.cls.operation is None and function.startswith(spec.name.lower())):
            return spec.cls, list(spec.cases.values())[-1]
    raise AssertionError(f"no optimizer of the registry runs {function}")


def _op_arguments(function, dtype):
    """The operation's arguments as its declaration lists them: per-param lists over a
    transposed and a misaligned param, the hyperparameters as the optimizer that runs it
    resolves them, GradScaler's scalars."""
    declaration = operations.OPERATIONS[function]
    params = make_params("views", dtype)
    grads = grads_for(params, 1)
    params = [p.detach() for p in params]  # opcheck calls the op outside no_grad
    state_dtype = torch.float32 if dtype != torch.float64 else dtype
    lists = []
    for k, name in enumerate(declaration.lists):
        if name == "params":
            lists.append(params)
        elif name == "grads":
            lists.append(grads)
        elif name == "steps":
            lists.append([torch.tensor(2.0) for _ in params])
        else:
            lists.append([torch.full_like(p, 0.01 * k, dtype=state_dtype) for p in params])
    cls, case = _user_of(function)
    optimizer = cls([torch.nn.Parameter(torch.zeros(1))], **case, backend="torch")
    hyper = optimizer.hyper(optimizer.param_groups[0], 0)
    kwargs = {name: hyper.get(name, _EXTRA_HYPER.get(name)) for name in declaration.hyperparameters}
    for name in declaration.scalars:
        value, scalar_dtype = _SCALARS[name]
        kwargs[name] = torch.tensor(value, dtype=scalar_dtype)
    return lists, kwargs


@needs_compiled_step
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("backend", [b for b in BACKENDS if b in ("torch", "cpu")])  # triton: its own file
@pytest.mark.parametrize("function", list(operations.OPERATIONS))
def test_opcheck(function, backend, dtype):
    backends.implementation(backend)  # the operators are defined (first, so that the test also runs alone)
    op = getattr(torch.ops.fused_optim, f"{backend}_{function}")
    args, kwargs = _op_arguments(function, dtype)
    torch.library.opcheck(op.default, args, kwargs)


def test_operators_run_the_backend_functions():
    """The compiled path calls the operator, the eager path the function: same result."""
    backend = "cpu" if "cpu" in BACKENDS else "torch"
    args, kwargs = _op_arguments("adam_step", torch.float32)
    twin_args, twin_kwargs = _op_arguments("adam_step", torch.float32)
    backends.implementation(backend)
    torch.ops.fused_optim.__getattr__(f"{backend}_adam_step")(*args, **kwargs)
    backends.implementation(backend).adam_step(*twin_args, **twin_kwargs)
    for a, b in zip(args, twin_args):
        if isinstance(a, list):
            assert all(torch.equal(x, y) for x, y in zip(a, b))
