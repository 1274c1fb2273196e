"""Case sections that describe the true system: what to solve, how to step it, from which states."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar, Mapping

from .fields import ConfigError, from_mapping, option

__all__ = [
    "KuramotoSivashinskyConfig", "TwoBodyConfig", "RigidBodyConfig", "LotkaVolterraConfig",
    "Lorenz63Config", "DoublePendulumConfig", "SYSTEM_CONFIGS", "SystemConfig", "parse_system",
    "TimeConfig", "InitialConditionConfig", "ComputeConfig", "OutputConfig", "CaseInfo",
    "FIXED_STEP_INTEGRATORS", "ADAPTIVE_INTEGRATORS", "DISCRETISATION_KEYS",
]

FIXED_STEP_INTEGRATORS = ("rk4", "euler")
ADAPTIVE_INTEGRATORS = ("dopri5", "dopri8", "bosh3", "adaptive_heun")

#: ``[system]`` keys of the spatial discretisation, not of the physics: a rollout on a coarser grid (or
#: with another method) is scored against a finer truth, restricted to its grid (``alignment``), and
#: has the same Lyapunov exponent
DISCRETISATION_KEYS = ("n_points", "method", "dealiasing_fraction", "fd_order")


@dataclass(frozen=True)
class CaseInfo:
    name: str = option("case", "short identifier, used in file titles and default output folders (letters, "
                       "digits, '_', '-', '.' where it names the folder: a folder name, not a path)")
    description: str = option("", "one line on what the case shows")


@dataclass(frozen=True)
class KuramotoSivashinskyConfig:
    name: str = option("kuramoto_sivashinsky", "system identifier", choices=("kuramoto_sivashinsky",))
    method: str = option("spectral", "spatial discretisation: pseudo-spectral ETDRK4 or finite differences",
                         choices=("spectral", "finite_difference"))
    domain_length: float = option(22.0, "period L of the domain (22: chaotic, lambda_1 ~ 0.043-0.048)", positive=True)
    n_points: int = option(64, "grid points N (even)", minimum=8)
    dealiasing_fraction: float = option(2.0 / 3.0, "spectral only: keep modes m < fraction * N/2 in u u_x (1 = off)",
                                        positive=True, maximum=1.0)
    fd_order: int = option(4, "finite_difference only: accuracy order of the central differences",
                           choices=(2, 4, 6, 8))
    nonlinear_coefficient: float = option(1.0, "c in -c u u_x (0 leaves the nonlinear term to a closure)")

    def validate(self, where: str) -> None:
        if self.n_points % 2:
            raise ConfigError(f"{where}.n_points = {self.n_points} must be even")

    def strict_cut_moved(self) -> bool:
        """Whether the spectral step keeps one mode fewer than before the 2/3 cut became strict
        (2026-11-28: ``m < fraction N/2``, before ``m <= fraction N/2``, which kept an aliased mode N/3
        at N divisible by 3): ``fraction N/2`` a whole number below N/2, e.g. N = 48 or 96 at 2/3."""
        half = self.n_points // 2
        cut = self.dealiasing_fraction * half
        return self.method == "spectral" and abs(cut - round(cut)) <= 1e-9 and round(cut) < half


@dataclass(frozen=True)
class TwoBodyConfig:
    name: str = option("two_body", "system identifier", choices=("two_body",))
    gravitational_parameter: float = option(1.0, "mu in x'' = -mu x / r^3", positive=True)


@dataclass(frozen=True)
class RigidBodyConfig:
    name: str = option("rigid_body", "system identifier", choices=("rigid_body",))
    moments_of_inertia: tuple[float, ...] = option((1.6, 1.0, 2.0 / 3.0), "principal moments I1, I2, I3",
                                                   positive=True, length=3)


@dataclass(frozen=True)
class LotkaVolterraConfig:
    name: str = option("lotka_volterra", "system identifier", choices=("lotka_volterra",))
    a: float = option(1.3, "prey growth rate in x' = a x - b x y", positive=True)
    b: float = option(0.9, "predation rate", positive=True)
    c: float = option(0.8, "predator growth per prey in y' = c x y - d y", positive=True)
    d: float = option(1.8, "predator death rate", positive=True)


@dataclass(frozen=True)
class Lorenz63Config:
    name: str = option("lorenz63", "system identifier", choices=("lorenz63",))
    sigma: float = option(10.0, "Prandtl number (0 in [hybrid.system]: a host without the x equation's coupling)",
                          nonnegative=True)
    rho: float = option(28.0, "Rayleigh number (0 in [hybrid.system]: a host without the rho x term)", nonnegative=True)
    beta: float = option(8.0 / 3.0, "geometric factor (0 in [hybrid.system]: a host without the -beta z term)",
                         nonnegative=True)


@dataclass(frozen=True)
class DoublePendulumConfig:
    name: str = option("double_pendulum", "system identifier", choices=("double_pendulum",))
    mass1: float = option(1.0, "mass of the inner bob", positive=True)
    mass2: float = option(1.0, "mass of the outer bob", positive=True)
    length1: float = option(1.0, "length of the inner rod", positive=True)
    length2: float = option(1.0, "length of the outer rod", positive=True)
    gravity: float = option(9.81, "gravitational acceleration (0 in [hybrid.system]: a host without gravity)",
                            nonnegative=True)


SYSTEM_CONFIGS: dict[str, type] = {
    "kuramoto_sivashinsky": KuramotoSivashinskyConfig,
    "two_body": TwoBodyConfig,
    "rigid_body": RigidBodyConfig,
    "lotka_volterra": LotkaVolterraConfig,
    "lorenz63": Lorenz63Config,
    "double_pendulum": DoublePendulumConfig,
}
SystemConfig = (KuramotoSivashinskyConfig | TwoBodyConfig | RigidBodyConfig | LotkaVolterraConfig
                | Lorenz63Config | DoublePendulumConfig)


def parse_system(mapping: Mapping[str, Any], where: str = "system", *, validate: bool = True) -> SystemConfig:
    """The ``[system]`` table, typed by its ``name`` (``validate``: as ``from_mapping``)."""
    name = mapping.get("name")
    if not isinstance(name, str) or name not in SYSTEM_CONFIGS:
        raise ConfigError(f"{where}.name = {name!r}: choose one of {sorted(SYSTEM_CONFIGS)}")
    return from_mapping(SYSTEM_CONFIGS[name], mapping, where, validate=validate)


@dataclass(frozen=True)
class TimeConfig:
    dt: float = option(0.01, "time step of the solver (and sampling interval before save_every)", positive=True)
    n_steps: int = option(1000, "steps per trajectory after spin-up", positive=True)
    save_every: int = option(1, "keep every k-th step in the output (at most n_steps)", positive=True)
    spinup_steps: int = option(0, "steps run and discarded before saving (reach the attractor); with an adaptive "
                                  "integrator they are fixed RK4 steps of dt (the saved part is adaptive)",
                               nonnegative=True)
    integrator: str = option("auto", "time integrator: etdrk4 (spectral KS), rk4/euler, or an adaptive torchdiffeq "
                             "method; auto = etdrk4 for spectral KS, rk4 otherwise",
                             choices=("auto", "etdrk4") + FIXED_STEP_INTEGRATORS + ADAPTIVE_INTEGRATORS)
    rtol: float = option(1e-7, "adaptive integrators: relative tolerance", positive=True)
    atol: float = option(1e-9, "adaptive integrators: absolute tolerance", positive=True)

    def validate(self, where: str) -> None:
        if self.save_every > self.n_steps:
            raise ConfigError(f"{where}.save_every = {self.save_every} exceeds {where}.n_steps = {self.n_steps}: "
                              "nothing after the initial state would be saved")

    @property
    def horizon(self) -> float:
        return self.dt * self.n_steps

    @property
    def sample_interval(self) -> float:
        return self.dt * self.save_every


@dataclass(frozen=True)
class InitialConditionConfig:
    distribution: str = option(
        "auto", "how members' initial states are drawn (auto: random_fourier for KS, two_body_orbit, "
        "rigid_body_circle; other systems must name one)",
        choices=("auto", "point", "gaussian", "uniform_box", "two_body_orbit", "rigid_body_circle", "random_fourier", "file"))
    members: int = option(16, "number of trajectories (ensemble members)", positive=True)
    seed: int = option(0, "seed; member i draws from the stream (seed, i) only", nonnegative=True)
    value: tuple[float, ...] | None = option(None, "point: the state; gaussian: its mean")
    std: tuple[float, ...] | None = option(None, "gaussian: standard deviation per component (or one for all)",
                                           nonnegative=True)
    low: tuple[float, ...] | None = option(None, "uniform_box: lower corner")
    high: tuple[float, ...] | None = option(None, "uniform_box: upper corner")
    eccentricity: tuple[float, ...] = option((0.5, 0.7), "two_body_orbit: e ~ U(low, high); state "
                                             "(1-e, 0, 0, sqrt(mu (1+e)/(1-e)))", nonnegative=True, length=2)
    angle: tuple[float, ...] = option((0.5, 1.5), "rigid_body_circle: phi ~ U(low, high); state (cos phi, 0, sin phi)",
                                      length=2)
    amplitude: float = option(1.0, "random_fourier: standard deviation of the field", positive=True)
    n_modes: int = option(4, "random_fourier: lowest Fourier modes 1..n_modes with random phases (below N/2: at "
                          "most (N - 1) // 2 of the truth's and the host's grids)", positive=True)
    file: str = option("", "file: NetCDF path (relative to the working directory) with u(member, x) or "
                       "u(member, component), components matched by name (or u(member, time, ...): "
                       "the first time is used), fields on a finer grid of the same domain filtered onto the case's "
                       "(as rollout.initial_conditions); the simulation keeps the file's member labels and starts its clock at "
                       "that time (plus the spin-up)")

    def validate(self, where: str) -> None:
        needs = {"point": ("value",), "gaussian": ("value", "std"), "uniform_box": ("low", "high"),
                 "file": ("file",)}.get(self.distribution, ())
        for name in needs:
            if not getattr(self, name):
                raise ConfigError(f"{where}.{name} is required when {where}.distribution = {self.distribution!r}")
        self._check_unused(where)
        if self.distribution == "uniform_box":
            if len(self.low) != len(self.high) or any(lo > hi for lo, hi in zip(self.low, self.high)):
                raise ConfigError(f"{where}.low and {where}.high must have equal lengths with low <= high")
        for name in ("eccentricity", "angle"):
            lo, hi = getattr(self, name)
            if lo > hi:
                raise ConfigError(f"{where}.{name} = [{lo}, {hi}]: give [low, high] with low <= high")
        if self.eccentricity[1] >= 1.0:
            raise ConfigError(f"{where}.eccentricity must stay below 1 (bound orbits)")

    def unused_keys(self, where: str = "initial_condition") -> list[str]:
        """What a key of another distribution, set to other than its default (the default itself cannot
        be told from an unset key), would be: ignored, in words. ``auto`` may become any of its
        defaults; a file replaces the draw, and a case switched to one keeps its draw's keys."""
        if self.distribution == "file":
            return []
        uses = {name: [kind for kind, keys in _DISTRIBUTION_KEYS.items() if name in keys]
                for keys in _DISTRIBUTION_KEYS.values() for name in keys}
        defaults = {field.name: field.default for field in dataclasses.fields(self)}
        unused = []
        for name, kinds in uses.items():
            if self.distribution in kinds or getattr(self, name) == defaults[name]:
                continue
            if self.distribution == "auto" and set(kinds) & set(_AUTO_DISTRIBUTIONS):
                continue
            named = " or ".join(repr(kind) for kind in kinds)
            unused.append(f"{where}.{name} is set but {where}.distribution = {self.distribution!r}, which does "
                          f"not use it; set distribution = {named}{',' if len(kinds) > 1 else ''} or remove {name}")
        return unused

    def _check_unused(self, where: str) -> None:
        """A file set beside a draw is refused: it would be ignored. Other keys of another distribution
        are warned about when the members are drawn (``unused_keys``): a case switched to another
        distribution by ``--set`` keeps its file's keys, and ``--set`` cannot remove them."""
        for problem in self.unused_keys(where):
            if problem.startswith(f"{where}.file "):  # (its default, "", is how --set removes it)
                raise ConfigError(f"{problem} (--set {where}.file='' removes it)")


# The keys each distribution reads (members and seed: all of them); ``auto`` resolves to one of
# _AUTO_DISTRIBUTIONS by the system (config.case).
_DISTRIBUTION_KEYS = {"point": ("value",), "gaussian": ("value", "std"), "uniform_box": ("low", "high"),
                      "two_body_orbit": ("eccentricity",), "rigid_body_circle": ("angle",),
                      "random_fourier": ("amplitude", "n_modes"), "file": ("file",)}
_AUTO_DISTRIBUTIONS = ("random_fourier", "two_body_orbit", "rigid_body_circle")


@dataclass(frozen=True)
class ComputeConfig:
    device: str = option("auto", "'auto' (CUDA when present), 'cpu', 'cuda' or 'cuda:N'")
    dtype: str = option("float64", "floating-point precision of solvers and models: simulations (the truth too), "
                               "training and rollouts; float32 for speed on GPUs, at the truth's accuracy too",
                        choices=("float64", "float32"))

    def validate(self, where: str) -> None:
        if self.device not in ("auto", "cpu", "cuda") and not (self.device.startswith("cuda:")
                                                              and self.device[5:].isdigit()):
            raise ConfigError(f"{where}.device = {self.device!r}: use 'auto', 'cpu', 'cuda' or 'cuda:N'")


@dataclass(frozen=True)
class OutputConfig:
    directory: str = option("", "where `hybridnde run` and the other verbs write their files by default (default: runs/<case name>; `-quick` is appended to the folder name under --quick)")
    compression_level: int = option(4, "zlib level of NetCDF variables (0 = off)", minimum=0, maximum=9)
    time_chunk: int = option(64, "saved times per NetCDF chunk along time", positive=True)
    # CF 2.6.2's optional descriptive attributes: who made the files, what to cite, anything else
    institution: str = option("", "the NetCDF files' global `institution` attribute (CF): where they were made; "
                                  "\"\": none")
    references: str = option("", "the NetCDF files' global `references` attribute (CF): published or web-based "
                                 "references describing the data or the methods; \"\": none")
    comment: str = option("", "the NetCDF files' global `comment` attribute (CF): anything else about the data; "
                              "\"\": none")

    #: the keys above that only describe the files (in no checksum: ``config.case.DESCRIPTIVE_KEYS``)
    DESCRIPTIVE: ClassVar[tuple[str, ...]] = ("institution", "references", "comment")

    def validate(self, where: str) -> None:
        for name in self.DESCRIPTIVE:  # netCDF-C ends an attribute's text at a NUL: the rest would be lost
            if "\0" in getattr(self, name):
                raise ConfigError(f"{where}.{name}: contains a NUL character, which a NetCDF attribute cannot "
                                  "hold; remove it")

    def descriptive_attributes(self) -> dict[str, str]:
        """The CF descriptive attributes given, for the global attributes of every NetCDF file a run writes."""
        return {name: getattr(self, name) for name in self.DESCRIPTIVE if getattr(self, name)}
