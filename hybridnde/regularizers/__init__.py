"""Jacobian regularizers of the hybrid right-hand side ``F_theta = F_known + C_theta``.

* ``directional``: directional-derivative mismatch, exact (``directional_jacobian_penalty``, forward
  mode against the system's exact ``jvp``) and finite-difference from data
  (``finite_difference_directional_penalty``, the paper's ``L_FD``), with ``sampling_error``;
* ``probes``: seeded Gaussian / Rademacher probe directions (``ProbeSampler``);
* ``tangent``: batched exact ``J_C(u) v`` through the closure (``closure_jvp``).
"""
from .directional import (FD_STENCILS, STENCIL_ORDER, directional_jacobian_penalty,
                          finite_difference_directional_penalty, finite_difference_mismatch, sampling_error)
from .probes import PROBE_DISTRIBUTIONS, ProbeSampler, draw_probes
from .tangent import JVP_METHODS, closure_jvp, supports_tangent

__all__ = [
    "directional_jacobian_penalty", "finite_difference_directional_penalty", "finite_difference_mismatch",
    "sampling_error", "FD_STENCILS", "STENCIL_ORDER", "ProbeSampler", "draw_probes", "PROBE_DISTRIBUTIONS",
    "closure_jvp", "supports_tangent", "JVP_METHODS",
]
