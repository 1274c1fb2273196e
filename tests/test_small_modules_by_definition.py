"""Small modules checked against their definitions or independent computations (helper-132's audit):
splines against scipy, observation noise against its documented formula, chunks against the shuffle
filter's definition and zlib, thread-count rules at their boundaries, and MemAvailable's units."""
from __future__ import annotations

import io
import logging
import zlib

import h5py
import numpy as np
import pytest
import scipy.interpolate
import torch

from hybridnde import memory, threads
from hybridnde.chunk_codec import ChunkLayout, decode_chunk, encode_block
from hybridnde.config import ConfigError
from hybridnde.interpolation import (
    CubicSpline,
    natural_cubic_spline,
    smoothing_cubic_spline,
)
from hybridnde.observation_noise import (
    NOISE_STREAM,
    add_observation_noise,
    noisy_trajectories,
)

# ---------------------------------------------------------------- interpolation

def _samples(m=15, seed=1):
    rng = np.random.default_rng(seed)
    t = np.sort(rng.uniform(0.0, 3.0, m))
    y = np.stack([np.sin(2 * t), t**2 - t], axis=1) + 0.1 * rng.standard_normal((m, 2))
    return t, y


def test_natural_spline_equals_scipy_natural_cubic_spline_everywhere():
    """Values and all three derivatives, inside, on the knots and on both extrapolated ends."""
    t, y = _samples()
    ours = natural_cubic_spline(torch.tensor(t), torch.tensor(y))
    theirs = scipy.interpolate.CubicSpline(t, y, bc_type="natural")
    query = np.concatenate([np.linspace(t[0] - 0.5, t[-1] + 0.5, 301), t])
    for order in (0, 1, 2, 3):
        got = ours(torch.tensor(query)) if order == 0 else ours.derivative(torch.tensor(query), order=order)
        expected = theirs(query, order)
        np.testing.assert_allclose(got.numpy(), expected, rtol=1e-9, atol=1e-10 * np.abs(expected).max())


def test_the_spline_keeps_the_samples_dtype_and_integers_become_float64():
    t = torch.arange(5.0)
    assert natural_cubic_spline(t, torch.arange(5.0, dtype=torch.float32)).dtype == torch.float32
    assert natural_cubic_spline(t, torch.arange(5)).dtype == torch.float64


def test_a_spline_refuses_values_and_curvatures_of_different_shapes():
    knots = torch.arange(3.0)
    with pytest.raises(ValueError, match="must both be"):
        CubicSpline(knots, torch.zeros(3, 2), torch.zeros(3, 1))


def test_smoothing_spline_with_weights_and_large_lam_equals_scipy():
    t, y = _samples(m=12, seed=4)
    w = np.random.default_rng(5).uniform(0.2, 3.0, t.shape[0])
    query = np.linspace(t[0] - 0.3, t[-1] + 0.3, 97)
    for lam in (1e-3, 1.0):
        ours = smoothing_cubic_spline(torch.tensor(t), torch.tensor(y), lam, weights=torch.tensor(w))
        for k in range(y.shape[1]):
            theirs = scipy.interpolate.make_smoothing_spline(t, y[:, k], w=w, lam=lam)
            np.testing.assert_allclose(ours(torch.tensor(query))[:, k].numpy(), theirs(query), rtol=1e-8, atol=1e-9)


# ---------------------------------------------------------------- observation noise

def test_noise_is_the_documented_draw_per_member_and_component():
    """noise = std * N(0, 1) from the stream [seed, member, NOISE_STREAM]; std = level (absolute) or
    level * mean over time of |u| per state component (mean)."""
    rng = np.random.default_rng(0)
    clean = torch.tensor(rng.normal(0.0, 1.0, (2, 30, 3)) + np.array([1.0, -5.0, 20.0]))
    members, seed, level = [7, 3], 11, 0.2
    for scale in ("absolute", "mean"):
        noisy = noisy_trajectories(clean, members, level=level, scale=scale, seed=seed)
        for row, member in enumerate(members):
            draw = np.random.default_rng([seed, member, NOISE_STREAM]).standard_normal((30, 3))
            std = level * np.abs(clean[row].numpy()).mean(axis=0) if scale == "mean" else level
            np.testing.assert_allclose((noisy[row] - clean[row]).numpy(), std * draw, rtol=1e-12, atol=1e-14)


def test_noise_keeps_the_trajectories_dtype():
    clean = torch.ones(1, 4, 2, dtype=torch.float32)
    assert noisy_trajectories(clean, [0], level=0.1).dtype == torch.float32


def test_any_positive_level_adds_noise_to_both_splits():
    from hybridnde.data import TrainingData

    clean = torch.ones(3, 5, 2, dtype=torch.float64)
    data = TrainingData(train=clean[:2], validation=clean[2:], train_members=(0, 1), validation_members=(2,),
                        sample_interval=0.1, path="", checksum="")
    noisy = add_observation_noise(data, level=1e-6, seed=2)
    for split, members in (("train", data.train_members), ("validation", data.validation_members)):
        expected = noisy_trajectories(getattr(data, split), members, level=1e-6, seed=2)
        assert not torch.equal(getattr(noisy, split), getattr(data, split))
        torch.testing.assert_close(getattr(noisy, split), expected, rtol=0, atol=0)


# ---------------------------------------------------------------- chunk codec

def _shuffled(values: np.ndarray) -> bytes:
    """HDF5's shuffle by its definition: byte j of element i goes to j * n + i."""
    raw = np.frombuffer(values.tobytes(), np.uint8).reshape(values.size, values.dtype.itemsize)
    return raw.T.tobytes()


@pytest.mark.parametrize("level", [1, 6])
def test_a_chunk_is_zlib_at_the_layouts_level_of_the_shuffled_little_endian_bytes(level):
    values = np.random.default_rng(2).standard_normal((2, 3, 5)).astype(">f8")  # big-endian input
    layout = ChunkLayout.for_output(n_times=3, time_chunk=3, state_size=5, dtype=">f8", compression_level=level)
    assert layout.dtype == np.dtype("<f8")
    block = encode_block(values, 0, 0, layout)
    for member in range(2):
        little = values[member].astype("<f8")
        assert block.chunks[member] == zlib.compress(_shuffled(little), level)
        assert len(zlib.decompress(block.chunks[member])) == layout.chunk_bytes
    uncompressed = ChunkLayout.for_output(n_times=3, time_chunk=3, state_size=5, dtype=">f8", compression_level=0)
    assert encode_block(values, 0, 0, uncompressed).chunks[0] == values[0].astype("<f8").tobytes()


def test_the_filter_pipeline_is_hdf5s_shuffle_then_deflate_and_levels_are_zlibs():
    layout = ChunkLayout.for_output(n_times=4, time_chunk=2, state_size=3, dtype=np.float32, compression_level=9)
    assert layout.filters == (h5py.h5z.FILTER_SHUFFLE, h5py.h5z.FILTER_DEFLATE)
    assert layout.chunk_bytes == 2 * 3 * np.dtype(np.float32).itemsize
    with pytest.raises(ValueError, match="zlib levels are 0-9"):
        ChunkLayout.for_output(n_times=4, time_chunk=2, state_size=3, dtype=np.float32, compression_level=10)


def test_decoding_undoes_the_shuffle_by_definition():
    values = np.random.default_rng(3).standard_normal((4, 6)).astype("<f4")
    layout = ChunkLayout.for_output(n_times=4, time_chunk=4, state_size=6, dtype=np.float32, compression_level=3)
    np.testing.assert_array_equal(decode_chunk(zlib.compress(_shuffled(values), 3), layout), values)


def test_a_block_past_the_files_end_is_refused():
    layout = ChunkLayout.for_output(n_times=6, time_chunk=4, state_size=2, dtype=np.float64, compression_level=0)
    encode_block(np.zeros((1, 2, 2)), 0, 4, layout)  # the edge chunk: saves 4, 5
    with pytest.raises(ValueError, match="not within one chunk"):
        encode_block(np.zeros((1, 3, 2)), 0, 4, layout)


# ---------------------------------------------------------------- threads

def test_available_cpus_is_the_affinity(monkeypatch):
    monkeypatch.setattr(threads.os, "sched_getaffinity", lambda pid: {0, 2, 5})
    assert threads.available_cpus() == 3


def test_the_thread_limit_is_four_per_cpu_at_least_64_and_inclusive(monkeypatch):
    monkeypatch.setattr(threads, "_TOLD", set())
    monkeypatch.setattr(threads, "available_cpus", lambda: 100)
    assert threads.thread_limit() == 400
    monkeypatch.setattr(threads, "available_cpus", lambda: 2)
    assert threads.thread_limit() == 64
    threads.check_thread_count(64, "t")  # at the limit: allowed (with a warning)
    with pytest.raises(ConfigError):
        threads.check_thread_count(65, "t")
    with pytest.raises(ConfigError, match="t = -1"):
        threads.check_thread_count(-1, "t")


def test_as_many_threads_as_cpus_is_no_oversubscription(monkeypatch, caplog):
    monkeypatch.setattr(threads, "_TOLD", set())
    monkeypatch.setattr(threads, "available_cpus", lambda: 2)
    with caplog.at_level(logging.WARNING):
        threads.check_thread_count(2, "t")
        assert "more than" not in caplog.text
        threads.check_thread_count(3, "t")
        assert "t = 3 is more than the 2 CPUs" in caplog.text


def test_zero_threads_leaves_torchs_count_and_any_count_is_given_back(monkeypatch):
    monkeypatch.setattr(threads, "available_cpus", lambda: 8)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(3)
        with threads.torch_threads(0):
            assert torch.get_num_threads() == 3
        with threads.torch_threads(2):
            assert torch.get_num_threads() == 2
        assert torch.get_num_threads() == 3
    finally:
        torch.set_num_threads(before)


# ---------------------------------------------------------------- memory

def test_available_memory_is_memavailable_in_kibibytes(monkeypatch):
    """/proc/meminfo's "kB" are 1024 bytes (the kernel's proc(5)); MemAvailable, not MemFree."""
    text = "MemTotal:       1000 kB\nMemFree:         300 kB\nMemAvailable:    700 kB\n"
    monkeypatch.setattr(memory, "open", lambda path, *a, **k: io.StringIO(text), raising=False)
    assert memory.available_memory() == 700 * 1024
    monkeypatch.setattr(memory, "open", lambda path, *a, **k: io.StringIO("MemTotal: 1 kB\n"), raising=False)
    assert memory.available_memory() is None
