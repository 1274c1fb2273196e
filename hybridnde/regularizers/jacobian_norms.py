"""Penalties on the Jacobian ``J = dF/du`` of a learned right-hand side, evaluated at given states.

Each penalty is a callable ``penalty(vector_field, t, u) -> Tensor`` (a 0-dim tensor, the mean over
the batch) that carries gradients to the parameters of ``vector_field`` (and to ``u`` if it requires
them). ``vector_field(t, u)`` is the solvers' closure convention, ``u: (batch, n)`` (any
``(batch, *state)`` is flattened to ``n``); the Jacobian is per member, so the field must act on each
row independently, as every closure in ``hybridnde.models`` does.

* ``FrobeniusNorm``  ``||J||_F^2``: Hutchinson's estimator ``E_v ||J v||^2`` with a few probes
  (Hutchinson 1990; Finlay et al. 2020, "How to train your neural ODE"), or exact from ``n`` JVPs when
  ``n`` is no larger than the number of probes.
* ``KineticEnergy``  ``||F||^2`` (RNODE, Finlay et al. 2020).
* ``RNODE``  ``||J||_F^2 + ||F||^2``: both of RNODE's terms at equal weight, as Josias & Brink's
  Frobenius setting (Josias & Brink 2022) uses them.
* ``SpectralNorm``  ``sigma_max(J)`` by power iteration on ``J^T J`` (one JVP and one VJP per
  iteration), warm-started from the previous call's singular vectors (Miyato et al. 2018 do the same
  for weight matrices), or exactly by SVD.
* ``ConditionNumber``  ``kappa = sigma_max / sigma_min`` (Josias & Brink 2022): exact SVD of the dense
  Jacobian for small ``n``; for large ``n`` a Lanczos process on ``J^T J`` (see the class).

Iterative estimates run without a graph; the value with gradients is then one differentiable
evaluation at the converged vectors (``||J y||`` at a unit singular vector ``y``), whose gradient is
exact at convergence because a singular value is stationary in its singular vector.
"""
from __future__ import annotations

import math
from typing import Hashable, Protocol

import torch
from torch import Tensor

from .jacobian_products import (JVP_METHODS, VectorField, dense_jacobian, jacobian_vector_product,
                                vector_jacobian_product)
from .probes import generator_state, load_generator_state, random_directions, unit_rows
from .warm_start import WarmStart, WarmStarted

__all__ = [
    "VectorField", "JacobianPenalty", "JVP_METHODS", "jacobian_vector_product", "vector_jacobian_product", "dense_jacobian",
    "FrobeniusNorm", "KineticEnergy", "RNODE", "SpectralNorm", "ConditionNumber", "JACOBIAN_PENALTIES",
    "build_jacobian_penalty", "hutchinson_variance",
]

class JacobianPenalty(Protocol):
    """``penalty(vector_field, t, u) -> 0-dim tensor``, the batch mean of a Jacobian functional."""

    name: str

    def __call__(self, vector_field: VectorField, t: Tensor, u: Tensor) -> Tensor: ...


# -- penalties -----------------------------------------------------------------------------------
class FrobeniusNorm:
    """``mean_b ||J_b||_F^2``.

    Hutchinson: ``||J||_F^2 = E_v ||J v||^2`` for ``v`` with ``E[v v^T] = I``; the estimate averages
    ``probes`` draws per member. For Gaussian ``v`` its variance per member is ``2 ||J^T J||_F^2 / probes``
    (Rademacher: ``2 (||J^T J||_F^2 - sum_i (J^T J)_ii^2) / probes``, never larger). ``product="vjp"``
    uses ``||v^T J||^2`` instead (same expectation; Finlay et al.'s choice).

    Args:
        probes: draws per member (2-10 is typical; the estimate is unbiased for any number).
        estimator: ``"auto"`` (exact when ``n <= probes``: then exact costs no more), ``"exact"``
            (``n`` JVPs) or ``"hutchinson"``.
        generator: seeded CPU generator for the probes (reproducible runs).
    """

    name = "frobenius"

    def __init__(self, *, probes: int = 4, estimator: str = "auto", distribution: str = "gaussian",
                 product: str = "jvp", jvp_method: str = "reverse", generator: torch.Generator | None = None):
        if probes < 1:
            raise ValueError(f"probes={probes} must be at least 1")
        if estimator not in ("auto", "exact", "hutchinson"):
            raise ValueError(f"estimator={estimator!r}; choose 'auto', 'exact' or 'hutchinson'")
        if distribution not in ("gaussian", "rademacher"):
            raise ValueError(f"distribution={distribution!r}; choose 'gaussian' or 'rademacher'")
        if product not in ("jvp", "vjp"):
            raise ValueError(f"product={product!r}; choose 'jvp' or 'vjp'")
        if jvp_method not in JVP_METHODS:
            raise ValueError(f"jvp_method={jvp_method!r}; choose one of {JVP_METHODS}")
        self.probes, self.estimator, self.distribution, self.product = probes, estimator, distribution, product
        self.jvp_method, self.generator = jvp_method, generator

    def uses_exact(self, n: int) -> bool:
        return self.estimator == "exact" or (self.estimator == "auto" and n <= self.probes)

    def __call__(self, vector_field: VectorField, t: Tensor | float, u: Tensor) -> Tensor:
        batch, n = u.shape[0], u[0].numel()
        if self.uses_exact(n):
            return dense_jacobian(vector_field, t, u, method=self.jvp_method).pow(2).sum(dim=(-2, -1)).mean()
        probes = random_directions((self.probes * batch, *u.shape[1:]), u, self.generator, self.distribution)
        repeated = u.repeat(self.probes, *([1] * (u.ndim - 1)))  # probe p of member b is row p * batch + b
        if self.product == "jvp":
            _, projected = jacobian_vector_product(vector_field, t, repeated, probes, method=self.jvp_method)
        else:
            _, projected = vector_jacobian_product(vector_field, t, repeated, probes)
        return projected.reshape(self.probes * batch, -1).pow(2).sum(-1).mean()

    def state_dict(self) -> dict[str, Tensor]:
        return generator_state(self.generator)

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        load_generator_state(self.generator, state)

    def __repr__(self) -> str:
        return f"FrobeniusNorm(probes={self.probes}, estimator={self.estimator!r}, product={self.product!r})"


class KineticEnergy:
    """``mean_b ||F(t, u_b)||^2``, the kinetic-energy term of RNODE (Finlay et al. 2020)."""

    name = "kinetic"

    def __call__(self, vector_field: VectorField, t: Tensor | float, u: Tensor) -> Tensor:
        time = t if isinstance(t, Tensor) else torch.as_tensor(t, dtype=u.dtype, device=u.device)
        return vector_field(time, u).reshape(u.shape[0], -1).pow(2).sum(-1).mean()

    def __repr__(self) -> str:
        return "KineticEnergy()"


class RNODE:
    """``mean_b (||J_b||_F^2 + ||F(t, u_b)||^2)``: RNODE's two regularizers at equal weight (Finlay et
    al. 2020 weight them separately; their experiments mostly use equal weights), the Jacobian term
    estimated as ``FrobeniusNorm`` does."""

    name = "rnode"

    def __init__(self, *, probes: int = 4, generator: torch.Generator | None = None):
        self.frobenius, self.kinetic = FrobeniusNorm(probes=probes, generator=generator), KineticEnergy()

    def __call__(self, vector_field: VectorField, t: Tensor | float, u: Tensor) -> Tensor:
        return self.frobenius(vector_field, t, u) + self.kinetic(vector_field, t, u)

    def state_dict(self) -> dict[str, Tensor]:
        return self.frobenius.state_dict()

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        self.frobenius.load_state_dict(state)

    def __repr__(self) -> str:
        return f"RNODE(probes={self.frobenius.probes})"


class SpectralNorm(WarmStarted):
    """``mean_b sigma_max(J_b)`` by power iteration on ``J^T J``, warm-started across calls.

    Each iteration is ``x <- J^T (J x) / ||J^T (J x)||`` (one JVP and one VJP); the error in
    ``sigma_max^2`` shrinks like ``(sigma_2 / sigma_1)^(2k)`` (Golub & Van Loan, Sec. 8.2.1). A cold
    start runs ``initial_iterations``; a call with a stored vector for every state (``row_ids`` or
    ``key``) runs only ``iterations``, enough when the parameters and states change little between calls.

    Args:
        method: ``"power"`` or ``"exact"`` (SVD of the dense Jacobian; small ``n``).
    """

    name = "spectral"

    def __init__(self, *, iterations: int = 2, initial_iterations: int = 30, method: str = "power",
                 jvp_method: str = "reverse", generator: torch.Generator | None = None):
        if iterations < 0 or initial_iterations < 1:
            raise ValueError(f"need iterations >= 0 and initial_iterations >= 1, got {iterations}, {initial_iterations}")
        if method not in ("power", "exact"):
            raise ValueError(f"method={method!r}; choose 'power' or 'exact'")
        self.iterations, self.initial_iterations, self.method = iterations, initial_iterations, method
        self.jvp_method = jvp_method
        self.state = WarmStart(generator)

    def singular_vectors(self, vector_field: VectorField, t: Tensor | float, u: Tensor, *,
                         key: Hashable | None = None, row_ids: Tensor | None = None) -> Tensor:
        """Leading right singular vectors ``(batch, n)`` (unit rows, no graph); warm starts are found by
        ``row_ids`` (one id per state) or by ``key`` (see ``warm_start.WarmStart``)."""
        batch, n = u.shape[0], u[0].numel()
        x, warm = self.state.start(u, (batch, n), key=key, row_ids=row_ids)
        iterations = self.iterations if warm else self.initial_iterations
        states = u.detach()
        with torch.no_grad():
            for _ in range(iterations):
                _, jx = jacobian_vector_product(vector_field, t, states, x.reshape(u.shape), method=self.jvp_method)
                _, jtjx = vector_jacobian_product(vector_field, t, states, jx)
                x = unit_rows(jtjx.reshape(batch, n))
        self.state.put(u, x, key=key, row_ids=row_ids)
        return x

    def per_member(self, vector_field: VectorField, t: Tensor | float, u: Tensor, *,
                   key: Hashable | None = None, row_ids: Tensor | None = None) -> Tensor:
        """``sigma_max(J_b)``, shape ``(batch,)``, differentiable."""
        if self.method == "exact":
            return torch.linalg.svdvals(dense_jacobian(vector_field, t, u, method=self.jvp_method))[:, 0]
        x = self.singular_vectors(vector_field, t, u, key=key, row_ids=row_ids)
        _, jx = jacobian_vector_product(vector_field, t, u, x.reshape(u.shape), method=self.jvp_method)
        return jx.reshape(u.shape[0], -1).norm(dim=-1)

    def __call__(self, vector_field: VectorField, t: Tensor | float, u: Tensor, *,
                 key: Hashable | None = None, row_ids: Tensor | None = None) -> Tensor:
        return self.per_member(vector_field, t, u, key=key, row_ids=row_ids).mean()

    def __repr__(self) -> str:
        return f"SpectralNorm(method={self.method!r}, iterations={self.iterations})"


class ConditionNumber(WarmStarted):
    """``mean_b kappa(J_b) = sigma_max / sigma_min`` (2-norm condition number; ``>= 1``, ``1`` is ideal).

    ``method="exact"``: singular values of the dense Jacobian (``n`` JVPs, then ``torch.linalg.svdvals``,
    whose gradient is exact while the extreme singular values are simple). ``"lanczos"``: ``steps``
    Lanczos iterations on ``J^T J`` with full reorthogonalisation (Golub & Van Loan, Sec. 10.1), one JVP
    and one VJP each; the extreme Ritz values converge first to ``sigma_max^2`` and ``sigma_min^2``.
    Chosen over power iteration on the shifted ``sigma_max^2 I - J^T J`` because that converges with
    the ratio of the two smallest gaps, often close to 1, while Lanczos converges at both ends at a
    rate set by the square root of those ratios. With ``steps >= n`` Lanczos is exact; with fewer,
    ``sigma_min`` is an over-estimate and ``kappa`` an under-estimate (Ritz values lie inside the
    spectrum), so warm starts (the sum of the last extreme Ritz vectors, per state or ``key``) help.
    ``"auto"``: exact for ``n <= exact_max_dim``, else Lanczos.
    """

    name = "condition"

    def __init__(self, *, method: str = "auto", steps: int = 20, exact_max_dim: int = 32,
                 jvp_method: str = "reverse", generator: torch.Generator | None = None):
        if method not in ("auto", "exact", "lanczos"):
            raise ValueError(f"method={method!r}; choose 'auto', 'exact' or 'lanczos'")
        if steps < 2:
            raise ValueError(f"steps={steps} must be at least 2")
        self.method, self.steps, self.exact_max_dim = method, steps, exact_max_dim
        self.jvp_method = jvp_method
        self.state = WarmStart(generator)

    def uses_exact(self, n: int) -> bool:
        return self.method == "exact" or (self.method == "auto" and n <= self.exact_max_dim)

    def extreme_singular_vectors(self, vector_field: VectorField, t: Tensor | float, u: Tensor, *,
                                 key: Hashable | None = None, row_ids: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Lanczos estimates of the right singular vectors of ``sigma_max`` and ``sigma_min``, each
        ``(batch, n)`` with unit rows (no graph); warm starts by ``row_ids`` or ``key`` (``warm_start.WarmStart``)."""
        batch, n = u.shape[0], u[0].numel()
        start, _ = self.state.start(u, (batch, n), key=key, row_ids=row_ids)
        steps = min(self.steps, n)
        states = u.detach()
        basis = torch.zeros(batch, steps, n, dtype=u.dtype, device=u.device)
        alpha = torch.zeros(batch, steps, dtype=u.dtype, device=u.device)
        beta = torch.zeros(batch, max(steps - 1, 0), dtype=u.dtype, device=u.device)
        q = unit_rows(start)
        with torch.no_grad():
            for j in range(steps):
                basis[:, j] = q
                _, jq = jacobian_vector_product(vector_field, t, states, q.reshape(u.shape), method=self.jvp_method)
                _, w = vector_jacobian_product(vector_field, t, states, jq)
                w = w.reshape(batch, n)
                alpha[:, j] = (w * q).sum(-1)
                # full reorthogonalisation against every basis vector so far (twice is enough:
                # Giraud et al. 2005), which also removes the three-term recurrence's components
                for _ in range(2):
                    w = w - torch.einsum("bk,bkn->bn", torch.einsum("bkn,bn->bk", basis[:, :j + 1], w),
                                         basis[:, :j + 1])
                if j == steps - 1:
                    break
                norm = w.norm(dim=-1)
                scale = alpha[:, : j + 1].abs().amax(-1).clamp_min(torch.finfo(u.dtype).tiny)
                broke_down = norm <= 1e3 * torch.finfo(u.dtype).eps * scale
                beta[:, j] = torch.where(broke_down, torch.zeros_like(norm), norm)
                if broke_down.any():
                    # an invariant subspace was found: continue from a fresh direction orthogonal to
                    # it, with a zero coupling (T stays block diagonal, its eigenvalues stay Ritz values)
                    fresh = random_directions((batch, n), u, self.state.generator)
                    for _ in range(2):
                        fresh = fresh - torch.einsum("bk,bkn->bn", torch.einsum("bkn,bn->bk", basis[:, :j + 1], fresh),
                                                     basis[:, :j + 1])
                    w = torch.where(broke_down[:, None], fresh, w)
                q = unit_rows(w)
            tridiagonal = torch.diag_embed(alpha) + torch.diag_embed(beta, 1) + torch.diag_embed(beta, -1)
            _, ritz = torch.linalg.eigh(tridiagonal)  # ascending eigenvalues
            smallest = unit_rows(torch.einsum("bkn,bk->bn", basis, ritz[:, :, 0]))
            largest = unit_rows(torch.einsum("bkn,bk->bn", basis, ritz[:, :, -1]))
        self.state.put(u, smallest + largest, key=key, row_ids=row_ids)
        return largest, smallest

    def extreme_singular_values(self, vector_field: VectorField, t: Tensor | float, u: Tensor, *,
                                key: Hashable | None = None, row_ids: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """``(sigma_max, sigma_min)``, each ``(batch,)``, differentiable."""
        batch, n = u.shape[0], u[0].numel()
        if self.uses_exact(n):
            singular_values = torch.linalg.svdvals(dense_jacobian(vector_field, t, u, method=self.jvp_method))
            return singular_values[:, 0], singular_values[:, -1]
        largest, smallest = self.extreme_singular_vectors(vector_field, t, u, key=key, row_ids=row_ids)
        vectors = torch.cat([largest, smallest]).reshape(2 * batch, *u.shape[1:])
        _, jv = jacobian_vector_product(vector_field, t, torch.cat([u, u]), vectors, method=self.jvp_method)
        norms = jv.reshape(2 * batch, -1).norm(dim=-1)
        return norms[:batch], norms[batch:]

    def per_member(self, vector_field: VectorField, t: Tensor | float, u: Tensor, *,
                   key: Hashable | None = None, row_ids: Tensor | None = None) -> Tensor:
        """``kappa(J_b)``, shape ``(batch,)``; ``inf`` where ``J_b`` is singular, a zero Jacobian (a
        closure initialised to zero) included, as ``numpy.linalg.cond`` has it -- not ``0 / 0 = nan``."""
        sigma_max, sigma_min = self.extreme_singular_values(vector_field, t, u, key=key, row_ids=row_ids)
        invertible = sigma_min > 0
        # divide by 1 where singular: the unused branch's 0/0 would leak nan into the gradient
        kappa = sigma_max / torch.where(invertible, sigma_min, torch.ones_like(sigma_min))
        return torch.where(invertible, kappa, torch.full_like(kappa, math.inf))

    def __call__(self, vector_field: VectorField, t: Tensor | float, u: Tensor, *,
                 key: Hashable | None = None, row_ids: Tensor | None = None) -> Tensor:
        return self.per_member(vector_field, t, u, key=key, row_ids=row_ids).mean()

    def __repr__(self) -> str:
        return f"ConditionNumber(method={self.method!r}, steps={self.steps})"


JACOBIAN_PENALTIES = ("none", "frobenius", "kinetic", "rnode", "spectral", "condition")


def build_jacobian_penalty(name: str, *, probes: int = 4, iterations: int = 0,
                           generator: torch.Generator | None = None) -> JacobianPenalty | None:
    """The penalty a case names (``training.jacobian_penalty``); ``None`` for ``"none"``. ``iterations``
    (``training.jacobian_penalty_iterations``): spectral power iterations, condition Lanczos steps;
    ``0``: their defaults (2, 20)."""
    if name == "none":
        return None
    if name == "frobenius":
        return FrobeniusNorm(probes=probes, generator=generator)
    if name == "kinetic":
        return KineticEnergy()
    if name == "rnode":
        return RNODE(probes=probes, generator=generator)
    if name == "spectral":
        return SpectralNorm(iterations=iterations or 2, generator=generator)
    if name == "condition":
        return ConditionNumber(steps=iterations or 20, generator=generator)
    raise ValueError(f"jacobian penalty {name!r}; choose one of {list(JACOBIAN_PENALTIES)}")


def hutchinson_variance(jacobian: Tensor, *, probes: int, distribution: str = "gaussian") -> Tensor:
    """Variance of ``FrobeniusNorm``'s batch-mean Hutchinson estimate for dense ``jacobian: (batch, n, n)``,
    with JVP probes (``product="jvp"``, ``||J v||^2``); for VJP probes (``||v^T J||^2``) pass ``J^T``."""
    gram = jacobian.transpose(-1, -2) @ jacobian
    per_member = gram.pow(2).sum(dim=(-2, -1))
    if distribution == "rademacher":
        per_member = per_member - torch.diagonal(gram, dim1=-2, dim2=-1).pow(2).sum(-1)
    return 2.0 * per_member.sum() / (probes * jacobian.shape[0] ** 2)

