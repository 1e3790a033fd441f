"""Oracles for gsmu.mu.influence: autograd Hessians and Jacobians, dense solves, finite differences."""
import pytest
import torch
from torch import nn
from torch.func import functional_call

from gsmu.base.data import load_drebin
from gsmu.mu.curvature import Factorization, Factorized, Nystrom
from gsmu.mu.influence import (CG, Curvature, Exact, LiSSA, Objective, ParamSpace, SolveStats,
                               binary_cross_entropy_sum, conjugate_gradient, get_solver, gradient_difference, gradient_residual, lissa,
                               loss_gradient, solve_exact, top_eigenvalue)


@pytest.fixture
def problem():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 4), nn.Tanh(), nn.Linear(4, 3)).double()
    x = torch.randn(30, 5, dtype=torch.float64)
    y = torch.randint(0, 3, (30,))
    return model, x, y


def _total_loss(model, space, objective, x, y):
    def f(theta):
        out = functional_call(model, space.split(theta), (x,))
        return objective.criterion(out, y) + objective.l2 / 2 * theta @ theta
    return f


def test_hvp_matches_autograd_hessian(problem):
    model, x, y = problem
    objective, space = Objective(l2=0.5), ParamSpace(model)
    hessian = torch.autograd.functional.hessian(_total_loss(model, space, objective, x, y), space.flat(model))
    curvature = Curvature(model, objective, space, (x, y), batch_size=7)
    v = torch.randn(space.dim, dtype=torch.float64)
    torch.testing.assert_close(curvature(v), hessian @ v)
    torch.testing.assert_close(curvature.dense(), hessian)
    assert curvature.evals == 30 + 30 * space.dim


def test_hvp_on_parameter_subset(problem):
    model, x, y = problem
    objective, space = Objective(l2=0.1), ParamSpace(model, ["2"])
    full = ParamSpace(model)
    hessian = torch.autograd.functional.hessian(_total_loss(model, full, objective, x, y), full.flat(model))
    tail = hessian[-space.dim:, -space.dim:]
    torch.testing.assert_close(Curvature(model, objective, space, (x, y)).dense(), tail)


def test_gauss_newton_is_jt_hout_j(problem):
    model, x, y = problem
    objective, space = Objective(l2=0.5), ParamSpace(model)
    theta = space.flat(model)
    jac = torch.autograd.functional.jacobian(
        lambda t: functional_call(model, space.split(t), (x,)).reshape(-1), theta)
    out = model(x).detach().reshape(-1)
    h_out = torch.autograd.functional.hessian(lambda o: objective.criterion(o.view(30, 3), y), out)
    expected = jac.T @ h_out @ jac + 0.5 * torch.eye(space.dim, dtype=torch.float64)
    dense = Curvature(model, objective, space, (x, y), kind="gauss-newton", batch_size=11).dense()
    torch.testing.assert_close(dense, expected)
    assert torch.linalg.eigvalsh(dense).min() >= 0.5 - 1e-8


def test_gradient_difference_matches_autograd(problem):
    model, x, y = problem
    objective, space = Objective(), ParamSpace(model)
    y2 = (y + 1) % 3

    def grad(targets):
        model.zero_grad()
        objective(model, x[:9], targets[:9]).backward()
        return torch.cat([p.grad.reshape(-1) for p in model.parameters()])

    expected = grad(y2) - grad(y)
    got = gradient_difference(model, objective, space, (x[:9], y[:9]), (x[:9], y2[:9]), batch_size=4)
    torch.testing.assert_close(got, expected)
    torch.testing.assert_close(loss_gradient(model, objective, space, (x[:9], y[:9]), batch_size=2), grad(y))


def test_cg_agrees_with_exact_solve(problem):
    model, x, y = problem
    objective, space = Objective(l2=0.3), ParamSpace(model)
    curvature = Curvature(model, objective, space, (x, y), kind="gauss-newton")
    b = torch.randn(space.dim, dtype=torch.float64)
    exact, _ = solve_exact(curvature.dense(), b, damping=0.2)
    x_cg, stats = conjugate_gradient(curvature, b, damping=0.2, tol=1e-10, max_iter=500)
    assert stats["converged"] and not stats["negative_curvature"] and stats["residual"] <= 1e-10
    torch.testing.assert_close(x_cg, exact, rtol=1e-6, atol=1e-8)


def test_cg_stops_on_negative_curvature():
    matrix = torch.diag(torch.tensor([2.0, -1.0], dtype=torch.float64))
    _, stats = conjugate_gradient(lambda v: matrix @ v, torch.tensor([0.0, 1.0], dtype=torch.float64))
    assert stats["negative_curvature"] and not stats["converged"]


def test_top_eigenvalue_matches_eigvalsh():
    gen = torch.Generator().manual_seed(1)
    a = torch.randn(30, 30, generator=gen, dtype=torch.float64)
    matrix = a @ a.T
    top = top_eigenvalue(lambda v: matrix @ v, 30, iterations=500, generator=gen, dtype=torch.float64)
    assert top == pytest.approx(float(torch.linalg.eigvalsh(matrix).max()), rel=1e-4)


def test_lissa_converges_to_effectively_damped_inverse():
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(20, 20, generator=gen, dtype=torch.float64)
    matrix = a @ a.T / 20 + 0.5 * torch.eye(20, dtype=torch.float64)
    b = torch.randn(20, generator=gen, dtype=torch.float64)
    scale, damping = 1.1 * float(torch.linalg.eigvalsh(matrix).max()), 0.05
    u, stats = lissa(lambda v: matrix @ v, b, damping=damping, scale=scale, iterations=20000, tol=1e-14)
    expected = torch.linalg.solve(matrix + damping * scale * torch.eye(20, dtype=torch.float64), b)
    assert stats["converged"] and stats["effective_damping"] == pytest.approx(damping * scale)
    torch.testing.assert_close(u, expected, rtol=1e-9, atol=1e-11)
    undamped, _ = lissa(lambda v: matrix @ v, b, damping=0.0, scale=scale, iterations=20000, tol=1e-14)
    torch.testing.assert_close(undamped, torch.linalg.solve(matrix, b), rtol=1e-9, atol=1e-11)


def test_lissa_reports_divergence():
    matrix = torch.diag(torch.tensor([10.0, 1.0], dtype=torch.float64))
    with pytest.raises(ValueError, match="scale"):
        lissa(lambda v: matrix @ v, torch.ones(2, dtype=torch.float64), scale=1.0, iterations=5000)


class _TinyLSTM(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(7, 4)
        self.lstm = nn.LSTM(4, 6, batch_first=True)
        self.head = nn.Linear(6, 7)

    def forward(self, tokens):
        return self.head(self.lstm(self.embed(tokens))[0])


def test_lstm_hvp_matches_finite_differences():
    torch.manual_seed(1)
    model = _TinyLSTM().double()
    tokens, targets = torch.randint(0, 7, (4, 8)), torch.randint(0, 7, (4, 8))
    objective, space = Objective(l2=0.1), ParamSpace(model, ["lstm", "head"])
    v = torch.randn(space.dim, dtype=torch.float64)
    theta = space.flat(model)

    def grad_at(t):
        space.assign(model, t)
        return loss_gradient(model, objective, space, (tokens, targets)) + 0.1 * t

    eps = 1e-5
    fd = (grad_at(theta + eps * v) - grad_at(theta - eps * v)) / (2 * eps)
    space.assign(model, theta)
    torch.testing.assert_close(Curvature(model, objective, space, (tokens, targets))(v), fd,
                               rtol=1e-5, atol=1e-6)
    gn = Curvature(model, objective, space, (tokens, targets), kind="gauss-newton")
    assert float(v @ gn(v)) >= 0.1 * float(v @ v) - 1e-9


def test_hessian_subsample_estimates_the_full_sum(problem):
    model, x, y = problem
    objective, space = Objective(l2=0.5), ParamSpace(model)
    v = torch.randn(space.dim, dtype=torch.float64)
    full = Curvature(model, objective, space, (x, y))(v)
    same = Curvature(model, objective, space, (x, y), rows=30, generator=torch.Generator().manual_seed(0))(v)
    torch.testing.assert_close(same, full)
    half = Curvature(model, objective, space, (x, y), rows=15, generator=torch.Generator().manual_seed(0))
    assert half.scale == 2.0 and len(half.data[0]) == 15


def test_bad_arguments_raise(problem):
    model, x, y = problem
    with pytest.raises(ValueError, match="prefix 'fc9'"):
        ParamSpace(model, ["fc9"])
    with pytest.raises(ValueError, match="curvature"):
        Curvature(model, Objective(), ParamSpace(model), (x, y), kind="fisher")
    with pytest.raises(ValueError, match="hessian_rows"):
        Curvature(model, Objective(), ParamSpace(model), (x, y), rows=31)
    with pytest.raises(ValueError, match="l2"):
        Objective(l2=-1.0)
    with pytest.raises(ValueError, match="linear"):
        gradient_residual(model, Objective(), (x, y), linear=torch.zeros(3))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_lstm_products_on_cuda_match_cpu():
    torch.manual_seed(2)
    model = _TinyLSTM().double()
    tokens, targets = torch.randint(0, 7, (4, 8)), torch.randint(0, 7, (4, 8))
    objective, space = Objective(l2=0.1), ParamSpace(model, ["lstm", "head"])
    v = torch.randn(space.dim, dtype=torch.float64)
    for kind in ("exact", "gauss-newton"):
        cpu = Curvature(model, objective, space, (tokens, targets), kind=kind)(v)
        gpu = Curvature(model.cuda(), objective, space, (tokens, targets), kind=kind)(v.cuda())
        model.cpu()
        torch.testing.assert_close(gpu.cpu(), cpu)
    gpu_grad = gradient_difference(model.cuda(), objective, space, (tokens, targets), (tokens, targets.roll(1, 1)))
    model.cpu()
    cpu_grad = gradient_difference(model, objective, space, (tokens, targets), (tokens, targets.roll(1, 1)))
    torch.testing.assert_close(gpu_grad.cpu(), cpu_grad)


# ---- solver objects --------------------------------------------------------------------------------------

def _spd(n=12, seed=0):
    gen = torch.Generator().manual_seed(seed)
    a = torch.randn(n, n, generator=gen, dtype=torch.float64)
    return a @ a.T / n + 0.3 * torch.eye(n, dtype=torch.float64), torch.randn(n, generator=gen, dtype=torch.float64)


SOLVER_OBJECTS = [Exact(damping=0.2), CG(damping=0.2, tol=1e-12, max_iter=200),
                  LiSSA(damping=0.2, max_iter=20000, tol=1e-15, power_iterations=300)]


@pytest.mark.parametrize("solver", SOLVER_OBJECTS, ids=lambda s: s.name)
@pytest.mark.parametrize("as_matrix", [True, False], ids=["matrix", "matvec"])
def test_each_solver_matches_torch_linalg_solve(solver, as_matrix):
    matrix, b = _spd()
    expected = torch.linalg.solve(matrix + 0.2 * torch.eye(len(b), dtype=torch.float64), b)
    h = matrix if as_matrix else (lambda v: matrix @ v)
    x, stats = solver.solve(h, b)
    torch.testing.assert_close(x, expected, rtol=1e-8, atol=1e-10)
    assert stats.residual <= 1e-9 and stats.converged and stats.damping == pytest.approx(0.2)


@pytest.mark.parametrize("solver", SOLVER_OBJECTS, ids=lambda s: s.name)
def test_solve_stats_has_every_field_for_every_solver(solver):
    matrix, b = _spd()
    calls = [0]

    def matvec(v):
        calls[0] += 1
        return matrix @ v

    _, stats = solver.solve(matvec, b)
    assert isinstance(stats, SolveStats) and stats.solver == solver.name
    assert isinstance(stats.iterations, int) and stats.iterations >= 1
    assert isinstance(stats.residual, float) and 0 <= stats.residual < 1e-8
    assert stats.converged is True and stats.negative_curvature is False
    assert stats.hvps == calls[0] >= 1  # every product with H counted (LiSSA: power iteration included)
    assert stats.seconds >= 0 and stats.damping == pytest.approx(0.2)
    # The residual reported is the true one of the damped system.
    x, _ = solver.solve(matrix, b)
    true = float((b - matrix @ x - 0.2 * x).norm() / b.norm())
    assert true < 1e-8
    assert set(stats.as_dict()) >= {"solver", "iterations", "residual", "converged", "negative_curvature",
                                    "effective_damping", "hvps", "seconds"}


def test_solvers_on_a_curvature_agree_and_count_hvps(problem):
    model, x, y = problem
    objective, space = Objective(l2=0.3), ParamSpace(model)
    h = Curvature(model, objective, space, (x, y), kind="gauss-newton")
    b = torch.randn(space.dim, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    exact, e_stats = Exact().solve(h, b)
    assert e_stats.hvps == space.dim  # the dense matrix: one product per column
    cg, c_stats = CG(tol=1e-11, max_iter=500).solve(h, b)
    torch.testing.assert_close(cg, exact, rtol=1e-7, atol=1e-9)
    assert c_stats.hvps == c_stats.iterations


def test_lissa_damping_is_effective_and_recursion_damping_is_the_authors():
    matrix, b = _spd(10, seed=1)
    scale = 1.2 * float(torch.linalg.eigvalsh(matrix).max())
    absolute, stats = LiSSA(damping=0.5, scale=scale, max_iter=20000, tol=1e-15).solve(matrix, b)
    authors, stats_d = LiSSA(recursion_damping=0.5 / scale, scale=scale, max_iter=20000, tol=1e-15).solve(matrix, b)
    torch.testing.assert_close(absolute, authors)
    assert stats.damping == pytest.approx(0.5) and stats_d.damping == pytest.approx(0.5) and stats.scale == scale


def test_function_api_is_the_solver_objects():
    matrix, b = _spd()
    x_obj, stats = CG(damping=0.1, tol=1e-10, max_iter=50).solve(lambda v: matrix @ v, b)
    x_fun, info = conjugate_gradient(lambda v: matrix @ v, b, damping=0.1, tol=1e-10, max_iter=50)
    assert torch.equal(x_obj, x_fun) and info["iterations"] == stats.iterations
    x_l, info_l = lissa(lambda v: matrix @ v, b, damping=0.01, scale=10.0, iterations=50)
    x_o, _ = LiSSA(recursion_damping=0.01, scale=10.0, max_iter=50).solve(lambda v: matrix @ v, b)
    assert torch.equal(x_l, x_o) and info_l["effective_damping"] == pytest.approx(0.1)
    assert torch.equal(solve_exact(matrix, b, 0.1)[0], Exact(0.1).solve(matrix, b)[0])


def test_registry_maps_names_to_presets():
    assert get_solver("cg") == CG() and get_solver("exact", damping=1.0) == Exact(1.0)
    assert get_solver("lissa", max_iter=5).max_iter == 5
    cg = CG(tol=1e-3)
    assert get_solver(cg) is cg


@pytest.mark.parametrize("make, match", [
    (lambda: Exact(damping=-1.0), "damping"),
    (lambda: CG(damping=-0.1), "damping"),
    (lambda: CG(damping=float("nan")), "damping"),
    (lambda: CG(tol=0.0), "tol"),
    (lambda: CG(tol=-1e-3), "tol"),
    (lambda: CG(max_iter=0), "max_iter"),
    (lambda: CG(max_iter=2.5), "max_iter"),
    (lambda: LiSSA(tol=0.0), "tol"),
    (lambda: LiSSA(max_iter=0), "max_iter"),
    (lambda: LiSSA(damping=-1.0), "damping"),
    (lambda: LiSSA(scale=0.0), "scale"),
    (lambda: LiSSA(recursion_damping=1.0), "recursion_damping"),
    (lambda: LiSSA(damping=0.1, recursion_damping=0.1), "either damping"),
    (lambda: get_solver("newton"), "solver='newton'"),
    (lambda: get_solver("cg", lissa_scale=2.0), "no option"),
    (lambda: get_solver(CG(), tol=1e-3), "solver object"),
])
def test_bad_solver_arguments_raise_clear_errors(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_bad_solve_inputs_raise():
    matrix, b = _spd(4)
    with pytest.raises(ValueError, match="flat vector"):
        CG().solve(matrix, b[:, None])
    with pytest.raises(ValueError, match="square"):
        Exact().solve(matrix[:3], b)
    with pytest.raises(ValueError, match="damping/scale < 1"):
        LiSSA(damping=100.0, scale=10.0).solve(matrix, b)


def test_weighted_gradient_difference_with_removed_rows(problem):
    model, x, y = problem
    objective, space = Objective(), ParamSpace(model)
    y2 = (y + 1) % 3
    z, zt = (x[:6], y[:6]), (x[:6], y2[:6])
    w = torch.tensor([1.0, 2.0, 0.5, 1.0, 3.0, 1.0], dtype=torch.float64)
    removed = torch.tensor([False, True, False, False, False, True])
    expected = torch.zeros(space.dim, dtype=torch.float64)
    for i in range(6):
        expected -= w[i] * loss_gradient(model, objective, space, (x[i:i + 1], y[i:i + 1]))
        if not removed[i]:
            expected += w[i] * loss_gradient(model, objective, space, (x[i:i + 1], y2[i:i + 1]))
    got = gradient_difference(model, objective, space, z, zt, batch_size=4, weights=w, removed=removed)
    torch.testing.assert_close(got, expected)
    only_removal = gradient_difference(model, objective, space, z, None)
    torch.testing.assert_close(only_removal, -loss_gradient(model, objective, space, z))
    uniform = gradient_difference(model, objective, space, z, zt, weights=torch.full((6,), 0.25))
    torch.testing.assert_close(uniform, 0.25 * gradient_difference(model, objective, space, z, zt))
    with pytest.raises(ValueError, match="weights has 2 entries"):
        gradient_difference(model, objective, space, z, zt, weights=torch.ones(2))


# ---------------------------------------------------------------------------------------------------------
# Amortized curvature (gsmu.mu.curvature): the factorization against autograd's dense Hessian


def _autograd_hessian(model, objective, x, y):
    space = ParamSpace(model)
    return torch.autograd.functional.hessian(_total_loss(model, space, objective, x, y), space.flat(model))


def _linear_problems():
    torch.manual_seed(1)
    x = torch.randn(50, 6, dtype=torch.float64)
    multi = (nn.Linear(6, 4).double(), Objective(l2=0.2), torch.randint(0, 4, (50,)))
    binary = (nn.Sequential(nn.Linear(6, 1), nn.Flatten(0)).double(),
              Objective(criterion=binary_cross_entropy_sum, l2=0.5), torch.randint(0, 2, (50,)))
    no_bias = (nn.Linear(6, 3, bias=False).double(), Objective(l2=0.1), torch.randint(0, 3, (50,)))
    return x, [multi, binary, no_bias]


@pytest.mark.parametrize("method", ["cholesky", "eigh"])
@pytest.mark.parametrize("damping", [0.0, 0.3])
def test_factorized_solve_matches_dense_autograd_hessian(method, damping):
    x, problems = _linear_problems()
    for model, objective, y in problems:
        hessian = _autograd_hessian(model, objective, x, y)
        fact = Factorization.build(model, objective, (x, y), method=method, damping=damping, batch_size=16)
        assert fact.cost.route == "kronecker" and fact.cost.hvps == 0
        b = torch.randn(len(hessian), dtype=torch.float64)
        expected = torch.linalg.solve(hessian + damping * torch.eye(len(hessian), dtype=torch.float64), b)
        torch.testing.assert_close(fact.solve(b, damping), expected, rtol=1e-9, atol=1e-10)
        got, stats = Factorized(fact, damping).solve(Curvature(model, objective, ParamSpace(model), (x, y)), b)
        torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-10)
        assert stats.solver == "factorized" and stats.hvps == 0 and stats.residual < 1e-12


def test_factorized_hvp_route_matches_autograd_on_a_nonlinear_model(problem):
    model, x, y = problem
    objective = Objective(l2=0.5)
    hessian = _autograd_hessian(model, objective, x, y)
    shift = max(0.0, -float(torch.linalg.eigvalsh(hessian).min())) + 1.0  # make H + shift·I definite
    fact = Factorization.build(model, objective, (x, y), method="eigh")
    assert fact.cost.route == "hvp" and fact.cost.hvps == ParamSpace(model).dim
    b = torch.randn(len(hessian), dtype=torch.float64)
    expected = torch.linalg.solve(hessian + shift * torch.eye(len(hessian), dtype=torch.float64), b)
    torch.testing.assert_close(fact.solve(b, shift), expected, rtol=1e-8, atol=1e-10)


def test_damping_change_reuses_the_eigendecomposition():
    x, problems = _linear_problems()
    model, objective, y = problems[0]
    fact = Factorization.build(model, objective, (x, y), method="eigh")
    vectors = fact.eigenvectors
    b = torch.randn(fact.dim, dtype=torch.float64)
    for damping in (0.0, 0.7, 3.0):
        fresh = Exact(damping).solve(_autograd_hessian(model, objective, x, y), b)[0]
        torch.testing.assert_close(fact.solve(b, damping), fresh, rtol=1e-9, atol=1e-10)
    assert fact.eigenvectors is vectors  # no new decomposition
    chol = Factorization.build(model, objective, (x, y), method="cholesky")
    torch.testing.assert_close(chol.solve(b, 0.7), fact.solve(b, 0.7), rtol=1e-9, atol=1e-10)


def test_factorization_rejects_another_model_and_bad_damping():
    x, problems = _linear_problems()
    (model, objective, y), (other, other_objective, y2) = problems[0], problems[1]
    solver = Factorized.build(model, objective, (x, y))
    b_other = torch.randn(ParamSpace(other).dim, dtype=torch.float64)
    with pytest.raises(ValueError, match="another model"):
        solver.solve(Curvature(other, other_objective, ParamSpace(other), (x, y2)), b_other)
    with pytest.raises(ValueError, match="another model"):
        solver.factorization.solve(b_other)
    moved = nn.Linear(6, 4).double()  # same shapes, other values
    with pytest.raises(ValueError, match="other parameter values"):
        solver.solve(Curvature(moved, objective, ParamSpace(moved), (x, y)), torch.ones(solver.factorization.dim,
                                                                                         dtype=torch.float64))
    with pytest.raises(ValueError, match="other data"):
        solver.solve(Curvature(model, objective, ParamSpace(model), (x + 1, y)),
                     torch.ones(solver.factorization.dim, dtype=torch.float64))
    with pytest.raises(ValueError, match="damping=-1"):
        solver.factorization.solve(torch.ones(solver.factorization.dim, dtype=torch.float64), damping=-1.0)
    with pytest.raises(ValueError, match="damping=-0.5"):
        Factorized(solver.factorization, damping=-0.5)
    with pytest.raises(ValueError, match="method"):
        Factorization.build(model, objective, (x, y), method="lu")
    with pytest.raises(TypeError, match="Factorization"):
        Factorized("not a factorization")


def test_factorized_hands_other_curvatures_to_its_fallback():
    x, problems = _linear_problems()
    model, objective, y = problems[0]
    fact = Factorization.build(model, objective, (x, y))
    solver = Factorized(fact, fallback=Exact())
    b = torch.randn(fact.dim, dtype=torch.float64)
    own = solver.solve(Curvature(model, objective, ParamSpace(model), (x, y)), b)
    assert own[1].solver == "factorized" and own[1].hvps == 0
    other = Curvature(model, objective, ParamSpace(model), (x + 1, y))  # e.g. H over corrected data
    got, stats = solver.solve(other, b)
    expected = torch.linalg.solve(_autograd_hessian(model, objective, x + 1, y), b)
    torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-10)
    assert stats.solver == "exact" and stats.hvps == fact.dim  # the dense per-request solve, counted as one
    moved = nn.Linear(6, 4).double()  # another model of the same shape: an error, not a silent dense solve
    with pytest.raises(ValueError, match="other parameter values"):
        solver.solve(Curvature(moved, objective, ParamSpace(moved), (x, y)), b)
    with pytest.raises(TypeError, match="fallback"):
        Factorized(fact, fallback="exact")


def test_break_even_counts_the_requests_that_amortize_a_one_off_cost():
    from gsmu.mu.curvature import break_even, passes
    # once + n·per < n·alternative  ⇔  n > once / (alternative − per): 10 / (3 − 1) = 5 → 6; 9/2 → 5
    assert break_even(10.0, 1.0, 3.0) == 6 and break_even(9.0, 1.0, 3.0) == 5 and break_even(0.0, 1.0, 3.0) == 1
    assert break_even(10.0, 3.0, 3.0) is None
    assert passes(3 * 58 * 100, 58) == 100  # 100 per-example gradients of a 58-parameter linear model
    with pytest.raises(ValueError, match="costs"):
        break_even(-1.0, 1.0, 3.0)


def test_cholesky_of_an_indefinite_hessian_raises_and_eigh_needs_damping(problem):
    model, x, y = problem
    objective = Objective()
    if float(torch.linalg.eigvalsh(_autograd_hessian(model, objective, x, y)).min()) >= 0:
        pytest.skip("the random MLP's Hessian happens to be definite")
    with pytest.raises(ValueError, match="not positive definite"):
        Factorization.build(model, objective, (x, y), method="cholesky")
    fact = Factorization.build(model, objective, (x, y), method="eigh")
    with pytest.raises(ValueError, match="not positive"):
        fact.solve(torch.ones(fact.dim, dtype=torch.float64))


def test_load_drebin_reads_and_verifies_the_mirror(tmp_path):
    import hashlib
    import json

    import numpy as np
    import scipy.sparse
    folder = tmp_path / "unlearning-authors" / "Drebin"
    folder.mkdir(parents=True)
    x = scipy.sparse.csr_matrix(np.array([[1, 0, 2], [0, 0, 1]]))
    scipy.sparse.save_npz(folder / "x_train.npz", x)
    np.save(folder / "y_train.npy", np.array([-1, 1]))
    (folder / "vocabulary.json").write_text(json.dumps(["a", "url::b", "c"]))
    (folder / "relevant_features.txt").write_text("url::b\n")
    sums = [f"{hashlib.sha256(p.read_bytes()).hexdigest()}  ./unlearning-authors/Drebin/{p.name}"
            for p in sorted(folder.iterdir())]
    (tmp_path / "SHA256SUMS").write_text("\n".join(sums) + "\n")
    got, labels, vocabulary, relevant = load_drebin("train", mirror=tmp_path)
    assert (got != x).nnz == 0 and labels.tolist() == [0, 1]
    assert vocabulary == ["a", "url::b", "c"] and relevant == ["url::b"]
    (folder / "relevant_features.txt").write_text("tampered\n")
    with pytest.raises(ValueError, match="SHA-256"):
        load_drebin("train", mirror=tmp_path)
    with pytest.raises(ValueError, match="split"):
        load_drebin("valid", mirror=tmp_path)


def test_factorization_of_sparse_counts_matches_autograd():
    gen = torch.Generator().manual_seed(2)
    x = (torch.rand(120, 40, generator=gen) < 0.03).double() * 2  # 3 % non-zero: the sparse product route
    y = torch.randint(0, 2, (120,), generator=gen)
    model = nn.Sequential(nn.Linear(40, 1), nn.Flatten(0)).double()
    objective = Objective(criterion=binary_cross_entropy_sum, l2=0.5)
    fact = Factorization.build(model, objective, (x, y), batch_size=50)
    assert fact.cost.hessian_macs < 120 * 41 * 41  # counted over the non-zeros only
    b = torch.randn(fact.dim, dtype=torch.float64, generator=gen)
    torch.testing.assert_close(fact.solve(b), torch.linalg.solve(_autograd_hessian(model, objective, x, y), b),
                               rtol=1e-9, atol=1e-10)


def test_nystrom_preconditioned_cg_solves_the_same_system_in_fewer_iterations():
    gen = torch.Generator().manual_seed(4)
    q = torch.linalg.qr(torch.randn(120, 120, generator=gen, dtype=torch.float64))[0]
    matrix = q @ torch.diag(torch.logspace(4, 0, 120, dtype=torch.float64)) @ q.T  # condition 10⁴
    b = torch.randn(120, generator=gen, dtype=torch.float64)
    expected = torch.linalg.solve(matrix + 0.5 * torch.eye(120, dtype=torch.float64), b)
    plain_x, plain = CG(damping=0.5, tol=1e-10, max_iter=1000).solve(matrix, b)
    pre = Nystrom(lambda v: matrix @ v, 120, 40, damping=0.5, generator=torch.Generator().manual_seed(0))
    assert pre.hvps == 40
    pcg_x, pcg = CG(damping=0.5, tol=1e-10, max_iter=1000, preconditioner=pre).solve(matrix, b)
    torch.testing.assert_close(pcg_x, expected, rtol=1e-7, atol=1e-9)
    torch.testing.assert_close(plain_x, expected, rtol=1e-7, atol=1e-9)
    assert pcg.converged and pcg.iterations < plain.iterations / 2
    full = Nystrom(matrix, 120, 120, damping=0.5, generator=torch.Generator().manual_seed(0))
    assert CG(damping=0.5, tol=1e-10, preconditioner=full).solve(matrix, b)[1].iterations <= 3


def test_nystrom_on_a_curvature_and_bad_arguments(problem):
    model, x, y = problem
    objective = Objective(l2=1.0)
    h = Curvature(model, objective, ParamSpace(model), (x, y), kind="gauss-newton")
    pre = Nystrom(h, h.dim, 10, generator=torch.Generator().manual_seed(0))
    assert pre.hvp_evals == 10 * len(x)
    b = torch.randn(h.dim, dtype=torch.float64)
    x_pcg, stats = CG(tol=1e-10, max_iter=500, preconditioner=pre).solve(h, b)
    torch.testing.assert_close(x_pcg, torch.linalg.solve(h.dense(), b), rtol=1e-6, atol=1e-8)
    with pytest.raises(ValueError, match="rank"):
        Nystrom(h, h.dim, h.dim + 1)
    with pytest.raises(ValueError, match="preconditioner"):
        CG(preconditioner="nystrom")
    with pytest.raises(ValueError, match="preconditioner is over"):
        pre(torch.ones(3, dtype=torch.float64))
