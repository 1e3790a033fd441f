"""K-FAC of a Linear head (`gsmu.mu.kfac`) against independent dense matrices: the exact Gauss-Newton matrix
from autograd Hessians and the library's `Curvature`, Kronecker products of factors formed here by hand, and
dense solves."""
from collections import OrderedDict

import pytest
import torch
from torch import nn

from gsmu.mu import unlearn
from gsmu.mu.influence import CG, Curvature, Objective, ParamSpace, gradient_difference
from gsmu.mu.kfac import Kfac, KfacSolver

F64 = torch.float64


def _linear(d_in: int = 4, classes: int = 3, seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(OrderedDict([("out", nn.Linear(d_in, classes))])).double()


def _two_layer(seed: int = 0, d_in: int = 5, hidden: int = 4, classes: int = 3) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(OrderedDict([("fc", nn.Linear(d_in, hidden)), ("act", nn.Tanh()),
                                      ("out", nn.Linear(hidden, classes))])).double()


def _data(rows: int, d_in: int, classes: int, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(rows, d_in, generator=gen, dtype=F64), torch.randint(0, classes, (rows,), generator=gen)


def _kron_to_space(layer: nn.Linear) -> torch.Tensor:
    """Position in ParamSpace order (weight row-major, then bias) of each row of W̃ = [W | b] row-major,
    written out by hand."""
    o, d = layer.out_features, layer.in_features
    return torch.tensor([i * d + j if j < d else o * d + i for i in range(o) for j in range(d + 1)])


def _reorder(kron: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    out = torch.zeros_like(kron)
    out[pos[:, None], pos[None, :]] = kron
    return out


def test_one_row_one_layer_is_the_exact_gauss_newton_matrix():
    model = _linear()
    x, y = _data(1, 4, 3)
    space = ParamSpace(model)

    def loss(theta):  # a linear model: its Hessian is its Gauss-Newton matrix
        out = torch.func.functional_call(model, space.split(theta), (x,))
        return nn.functional.cross_entropy(out, y, reduction="sum")

    hessian = torch.autograd.functional.hessian(loss, space.flat(model))
    kfac = Kfac.build(model, Objective(), (x, y))
    torch.testing.assert_close(kfac.matrix(), hessian, rtol=1e-10, atol=1e-12)
    b = torch.randn(space.dim, generator=torch.Generator().manual_seed(2), dtype=F64)
    for damping in (1e-3, 0.5):  # one factorization, any damping
        x_kfac, stats = KfacSolver(kfac, damping).solve(hessian, b)
        expected = torch.linalg.solve(hessian + damping * torch.eye(space.dim, dtype=F64), b)
        torch.testing.assert_close(x_kfac, expected, rtol=1e-8, atol=1e-8)
        assert stats.residual < 1e-10 and stats.hvps == 1 and stats.solver == "kfac"


def test_many_rows_one_layer_is_the_kronecker_product_of_the_factors():
    model = _linear(6, 4)
    x, y = _data(50, 6, 4)
    kfac = Kfac.build(model, Objective(l2=0.3), (x, y), batch_size=16)  # chunks must add up
    with torch.no_grad():
        p = torch.softmax(model(x), 1)
    g = (torch.diag_embed(p) - p[:, :, None] * p[:, None, :]).sum(0)  # Σ E_y[ggᵀ], g = p − e_y
    xt = torch.cat([x, torch.ones(len(x), 1, dtype=F64)], 1)
    a = xt.T @ xt
    layer = kfac.layers[0]
    torch.testing.assert_close(layer.a, a)
    torch.testing.assert_close(layer.g, g)
    expected = _reorder(torch.kron(g, a) / len(x), _kron_to_space(model.out))
    torch.testing.assert_close(kfac.matrix(), expected + 0.3 * torch.eye(len(expected), dtype=F64))
    b = torch.randn(len(expected), generator=torch.Generator().manual_seed(3), dtype=F64)
    damping = 0.05
    dense = expected + (damping + 0.3) * torch.eye(len(expected), dtype=F64)  # the objective's l2 is added
    x_kfac, _ = KfacSolver(kfac, damping, measure=False).solve(None, b)
    torch.testing.assert_close(x_kfac, torch.linalg.solve(dense, b), rtol=1e-8, atol=1e-10)
    torch.testing.assert_close(kfac.matvec(b, damping), dense @ b)


def _independent_blocks(model: nn.Sequential, x: torch.Tensor) -> list[torch.Tensor]:
    """(1/n)·(Σᵢ Jᵢᵀ Sᵢ Jᵢ) ⊗ (Σᵢ ãᵢãᵢᵀ) per layer, Jᵢ the Jacobian of the logits in the layer's outputs
    (autograd, one row at a time) and Sᵢ = diag(pᵢ) − pᵢpᵢᵀ."""
    fc, act, out = model.fc, model.act, model.out
    with torch.no_grad():
        hidden = act(fc(x))
        p = torch.softmax(out(hidden), 1)
    s = torch.diag_embed(p) - p[:, :, None] * p[:, None, :]
    blocks = []
    for inputs, rest, layer in ((x, lambda z: out(act(z)), fc), (hidden, lambda z: z, out)):
        g = sum(j.T @ si @ j for j, si in zip(
            (torch.autograd.functional.jacobian(rest, layer(row[None]).detach()[0]) for row in inputs), s))
        xt = torch.cat([inputs, torch.ones(len(inputs), 1, dtype=F64)], 1)
        blocks.append(_reorder(torch.kron(g, xt.T @ xt) / len(x), _kron_to_space(layer)))
    return blocks


def test_two_layers_block_diagonal_each_block_kronecker():
    model = _two_layer()
    x, y = _data(40, 5, 3)
    kfac = Kfac.build(model, Objective(), (x, y))
    space = ParamSpace(model)
    matrix = kfac.matrix()
    fc_size = model.fc.weight.numel() + model.fc.bias.numel()
    assert space.names == ["fc.weight", "fc.bias", "out.weight", "out.bias"]
    assert torch.count_nonzero(matrix[:fc_size, fc_size:]) == 0 and torch.count_nonzero(matrix[fc_size:, :fc_size]) == 0
    first, second = _independent_blocks(model, x)
    torch.testing.assert_close(matrix[:fc_size, :fc_size], first)  # each in its layer's weight-then-bias order
    torch.testing.assert_close(matrix[fc_size:, fc_size:], second)
    b = torch.randn(space.dim, generator=torch.Generator().manual_seed(4), dtype=F64)
    dense = matrix + 0.1 * torch.eye(space.dim, dtype=F64)
    torch.testing.assert_close(kfac.solve(b, 0.1), torch.linalg.solve(dense, b), rtol=1e-8, atol=1e-10)


def test_one_row_blocks_equal_the_gauss_newton_blocks_and_ekfac_its_diagonal():
    model = _two_layer(seed=5)
    space = ParamSpace(model)
    fc_size = model.fc.weight.numel() + model.fc.bias.numel()
    x1, y1 = _data(1, 5, 3, seed=6)
    gn = Curvature(model, Objective(), space, (x1, y1), kind="gauss-newton").dense()
    one = Kfac.build(model, Objective(), (x1, y1)).matrix()
    for block in (slice(0, fc_size), slice(fc_size, None)):  # one row: each layer's block is exact
        torch.testing.assert_close(one[block, block], gn[block, block], rtol=1e-9, atol=1e-12)
    # EK-FAC's eigenvalues are the exact diagonal of each Gauss-Newton block in the Kronecker eigenbasis.
    x, y = _data(60, 5, 3, seed=7)
    gn = Curvature(model, Objective(), space, (x, y), kind="gauss-newton").dense()
    ekfac = Kfac.build(model, Objective(), (x, y), eigenvalues="ekfac")
    assert ekfac.cost.route == "ekfac" and ekfac.cost.hessian_macs > 0
    for layer in ekfac.layers:
        pos = layer.positions.reshape(-1)
        q = torch.kron(layer.qg, layer.qa)
        torch.testing.assert_close(layer.eigenvalues.reshape(-1), torch.diag(q.T @ gn[pos][:, pos] @ q))
        # …and EK-FAC fits the block at least as well as K-FAC in Frobenius norm (George et al. 2018).
        kfac = Kfac.build(model, Objective(), (x, y)).layers[ekfac.layers.index(layer)]
        assert (layer.block() - gn[pos][:, pos]).norm() <= (kfac.block() - gn[pos][:, pos]).norm() + 1e-12


def test_preconditioned_cg_needs_fewer_iterations_on_the_true_gauss_newton():
    torch.manual_seed(8)
    model = nn.Sequential(OrderedDict([("fc", nn.Linear(12, 10)), ("relu", nn.ReLU()),
                                       ("out", nn.Linear(10, 5))])).double()
    x, y = _data(300, 12, 5, seed=9)
    # Badly scaled features (three decades): the ill-conditioning that K-FAC's input factor A captures. On
    # well-scaled random features and large damping K-FAC PCG need not beat plain CG (see bench/kfac_head.py).
    x = x * torch.logspace(-1.5, 1.5, 12, dtype=F64) + 0.5
    space = ParamSpace(model)
    gn = Curvature(model, Objective(), space, (x, y), kind="gauss-newton").dense()  # the true GN matrix
    b = gradient_difference(model, Objective(), space, (x[:20], y[:20]), (x[:20], (y[:20] + 1) % 5))
    damping, tol = 1e-2, 1e-6
    plain_x, plain = CG(damping=damping, tol=tol, max_iter=5000).solve(gn, b)
    pre = Kfac.build(model, Objective(), (x, y)).preconditioner(damping)
    pcg_x, pcg = CG(damping=damping, tol=tol, max_iter=5000, preconditioner=pre).solve(gn, b)
    assert plain.converged and pcg.converged
    assert pcg.iterations < plain.iterations, (pcg.iterations, plain.iterations)
    assert pre.calls == pcg.iterations + 1
    system = gn + damping * torch.eye(space.dim, dtype=F64)
    for sol in (plain_x, pcg_x):  # both reach the tolerance on the true system (measured here, not CG's own)
        assert float((system @ sol - b).norm() / b.norm()) < 2 * tol


def test_solver_inside_second_order_and_curvature_checks():
    model = _two_layer(seed=10)
    x, y = _data(30, 5, 3, seed=11)
    request = unlearn.fix_labels(x, y, (y + 1) % 3, torch.arange(5), num_classes=3)
    solver = KfacSolver.build(model, Objective(), (x, y), damping=0.2)
    new, result = unlearn.second_order(model, Objective(), request, (x, y), solver=solver, curvature="gauss-newton")
    space = ParamSpace(model)
    g = gradient_difference(model, Objective(), space, request.z, request.z_tilde)
    torch.testing.assert_close(space.flat(new), space.flat(model) - solver.kfac.solve(g, 0.2))
    assert result.solves[0].hvps == 1  # the residual measured against the true H
    other = _two_layer(seed=12)
    with pytest.raises(ValueError, match="other parameter values"):
        solver.solve(Curvature(other, Objective(), ParamSpace(other), (x, y), kind="gauss-newton"), g)
    small = _linear(5, 3)
    with pytest.raises(ValueError, match="build one for this head"):
        solver.solve(Curvature(small, Objective(), ParamSpace(small), (x, y)), g[:18])


def test_bad_inputs_raise_value_errors_naming_the_parameter():
    model = _two_layer()
    x, y = _data(10, 5, 3)
    kfac = Kfac.build(model, Objective(), (x, y))
    bn = nn.Sequential(OrderedDict([("fc", nn.Linear(5, 4)), ("bn", nn.BatchNorm1d(4)), ("out", nn.Linear(4, 3))]))
    with pytest.raises(ValueError, match="model module 'bn' is BatchNorm1d"):
        Kfac.build(bn.double(), Objective(), (x, y))
    with pytest.raises(ValueError, match="model must be an nn.Sequential"):
        Kfac.build(nn.Linear(5, 3).double(), Objective(), (x, y))
    with pytest.raises(ValueError, match="damping"):
        kfac.solve(torch.ones(kfac.dim, dtype=F64), -1.0)
    with pytest.raises(ValueError, match="damping"):
        KfacSolver(kfac, damping=-0.1)
    with pytest.raises(ValueError, match="damping"):
        kfac.preconditioner(-1.0)
    with pytest.raises(ValueError, match=r"b \(the right-hand side\) has shape"):
        kfac.solve(torch.ones(kfac.dim + 1, dtype=F64), 0.1)
    with pytest.raises(ValueError, match=r"r \(the residual\) has shape \(7,\); this K-FAC is over 39"):
        kfac.preconditioner(0.1)(torch.ones(7, dtype=F64))
    with pytest.raises(ValueError, match="v has shape"):
        kfac.matvec(torch.ones(3, dtype=F64))
    with pytest.raises(ValueError, match="data\\[0\\] must be the head's inputs"):
        Kfac.build(model, Objective(), (x[:, :4], y))
    with pytest.raises(ValueError, match="objective must be"):
        Kfac.build(model, Objective(criterion=lambda o, t: o.sum()), (x, y))
    with pytest.raises(ValueError, match="fisher"):
        Kfac.build(model, Objective(), (x, y), fisher="empirical")
    with pytest.raises(ValueError, match="samples"):
        Kfac.build(model, Objective(), (x, y), fisher="sampled", samples=0)
    one = Kfac.build(_linear(5, 3), Objective(), _data(1, 5, 3))  # rank-deficient: needs damping
    with pytest.raises(ValueError, match="give damping > 0"):
        one.solve(torch.ones(one.dim, dtype=F64), 0.0)


def test_sampled_fisher_same_seed_same_numbers_and_unbiased():
    model = _two_layer(seed=13)
    x, y = _data(20, 5, 3, seed=14)
    first, again, other = (Kfac.build(model, Objective(), (x, y), fisher="sampled", samples=3, seed=s,
                                      eigenvalues="ekfac") for s in (3, 3, 4))
    for a, b, c in zip(first.layers, again.layers, other.layers):
        assert torch.equal(a.g, b.g) and torch.equal(a.eigenvalues, b.eigenvalues)
        assert not torch.equal(a.g, c.g)
    exact = Kfac.build(model, Objective(), (x, y))
    many = Kfac.build(model, Objective(), (x, y), fisher="sampled", samples=4000, seed=0)
    for e, m in zip(exact.layers, many.layers):  # sampled labels estimate the exact expectation
        assert float((m.g - e.g).norm() / e.g.norm()) < 0.05
        torch.testing.assert_close(m.a, e.a)
    assert many.cost.seconds > 0 and many.solve_macs == exact.solve_macs > 0
