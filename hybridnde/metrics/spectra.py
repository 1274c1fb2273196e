"""Energy spectra of periodic 1-D fields and a distance between two spectra.

With ``u_hat_m = (1/N) sum_j u_j exp(-2 pi i m j / N)`` (numpy's ``rfft`` divided by ``N``) the
one-sided energy spectrum is

    E_m = c_m < |u_hat_m|^2 >,   c_0 = c_{N/2} = 1, c_m = 2 otherwise,

averaged over members and times, so that by Parseval ``sum_m E_m = < mean_j u_j^2 >`` (the mean
squared field). ``u = a cos(2 pi m x / L + phi)`` has ``E_m = a^2 / 2``. Wavenumbers are
``k_m = 2 pi m / L``.
"""
from __future__ import annotations

import numpy as np

from solvers.kuramoto_sivashinsky import dealiasing_mask

__all__ = ["energy_spectrum", "wavenumbers", "spectral_distance", "compared_modes", "EMPTY_MODE"]


def energy_spectrum(u: np.ndarray) -> np.ndarray:
    """Time- and member-averaged one-sided energy spectrum ``E_m``, ``m = 0 .. N/2``.

    Args:
        u: (..., N) real periodic fields in physical space, e.g. (member, time, x). States with a
            non-finite value are left out of the average (a diverged member after its blow-up).
    Returns:
        (N // 2 + 1,); NaN everywhere when no state is finite; ``inf`` in a mode whose energy
        exceeds the float range (a finite member on its way to a blow-up).
    """
    u = np.asarray(u, dtype=np.float64)
    n_points = u.shape[-1]
    states = u.reshape(-1, n_points)
    states = states[np.isfinite(states).all(axis=1)]
    if not states.shape[0]:
        return np.full(n_points // 2 + 1, np.nan)
    with np.errstate(over="ignore"):  # a huge but finite member's energy beyond the float range is inf
        power = np.abs(np.fft.rfft(states, axis=-1) / n_points) ** 2  # (state, mode)
    weights = np.full(n_points // 2 + 1, 2.0)
    weights[0] = 1.0
    if n_points % 2 == 0:
        weights[-1] = 1.0  # the Nyquist mode has no mirror image
    return weights * power.mean(axis=0)


def wavenumbers(n_points: int, domain_length: float) -> np.ndarray:
    """``k_m = 2 pi m / L`` for ``m = 0 .. N/2``."""
    return 2.0 * np.pi * np.arange(n_points // 2 + 1) / float(domain_length)


#: a mode whose energy is below this fraction of the spectrum's peak is numerically empty
EMPTY_MODE = 1e-20


def spectral_distance(spectrum: np.ndarray, reference: np.ndarray, *, relative_floor: float = 1e-4) -> float:
    """Mean over compared modes of ``|log10(E_m / E*_m)|``: 0 for equal spectra, 1 for a factor 10.

    Compared modes are ``1 <= m < min(N, N*) / 2`` (the mean and the Nyquist mode of the coarser
    grid are left out; the shorter spectrum sets the range, so a coarse model is compared with the
    truth on the modes it can represent) that are

    * energetic: either spectrum exceeds ``relative_floor * max(E*)``. Modes far below (round-off,
      strongly damped modes) would dominate a mean of logs without mattering to the dynamics; a
      model that piles energy into such a mode still counts;
    * carried by the model's grid: every mode ``m < 2/3 N/2`` (what the 2/3 rule keeps on the model's
      grid), and above that a mode where the model's energy exceeds ``EMPTY_MODE`` times its own
      peak. A band a spectral model's dealiasing empties would add ~30 decades for every closure
      alike and say nothing about any of them; a mode below the cut that the model empties is a
      failure and counts (``inf``). (The rule was the model's energy per mode, then its highest
      non-empty mode: either excused a model for emptying energetic modes, and the second made the
      score depend on the file's precision, whose round-off fills empty modes.)
    The mean (``m = 0``) is not compared: a constant offset does not change the distance (the
    histograms' KL divergence sees it).

    Args:
        spectrum, reference: one-sided spectra from ``energy_spectrum`` (lengths may differ).
    Returns:
        The distance; ``inf`` when the model's spectrum is non-finite or empty, or the truth has no
        energy in a counted mode.
    """
    spectrum, reference = np.asarray(spectrum, dtype=np.float64), np.asarray(reference, dtype=np.float64)
    if not np.isfinite(spectrum).all():
        return float("inf")
    modes = compared_modes(spectrum, reference, relative_floor=relative_floor)
    if not modes.size:
        return float("inf")
    model, truth = spectrum[modes], reference[modes]
    if not (truth > 0).all() or not (model > 0).all():
        return float("inf")
    return float(np.mean(np.abs(np.log10(model / truth))))


def compared_modes(spectrum: np.ndarray, reference: np.ndarray, *, relative_floor: float = 1e-4) -> np.ndarray:
    """The modes ``m`` that ``spectral_distance`` compares (its rules), increasing; ``spectrum`` finite."""
    spectrum, reference = np.asarray(spectrum, dtype=np.float64), np.asarray(reference, dtype=np.float64)
    last = min(spectrum.size, reference.size) - 1  # index of the coarser grid's Nyquist mode
    modes = np.arange(1, max(last, 1))
    floor = relative_floor * np.nanmax(reference[1:]) if reference.size > 1 else 0.0
    kept = dealiasing_mask(spectrum.size - 1)  # the 2/3 rule on the model's grid (N/2 = size - 1)
    carried = kept[modes] | (spectrum[modes] > EMPTY_MODE * np.max(spectrum[1:], initial=0.0))
    return modes[((reference[modes] > floor) | (spectrum[modes] > floor)) & carried]
