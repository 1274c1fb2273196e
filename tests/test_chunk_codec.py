"""Chunks encoded on the ranks are the bytes HDF5's own shuffle + deflate filters store."""
from __future__ import annotations

import h5py
import netCDF4
import numpy as np
import pytest
import xarray as xr

from hybridnde.chunk_codec import ChunkLayout, decode_chunk, encode_block
from hybridnde.netcdf_stream import TrajectoryStreamWriter


def make_writer(path, *, members, n_times, state_size, dtype, level, time_chunk):
    return TrajectoryStreamWriter(
        path, members=np.arange(members), times=np.arange(n_times, dtype=float), state_dim="x",
        state_coords=np.linspace(0.0, 1.0, state_size, endpoint=False), state_shape=(state_size,), dtype=np.dtype(dtype),
        title="t", solver="s", closure_checksum="none", case_toml="", extra_attrs={}, compression_level=level,
        time_chunk=time_chunk)


def chaotic_field(shape, dtype, seed=0):
    """Smooth in x, with the full mantissa noise of a simulation (compresses as badly as KS does)."""
    rng = np.random.default_rng(seed)
    x = np.linspace(0, 2 * np.pi, shape[-1], endpoint=False)
    phase = rng.uniform(0, 2 * np.pi, shape[:-1] + (1,))
    return (np.sin(x + phase) + 1e-3 * rng.standard_normal(shape)).astype(dtype)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("level", [0, 1, 4])
def test_directly_written_chunks_read_back_through_netcdf_and_xarray(tmp_path, dtype, level):
    members, n_times, state_size, time_chunk = 3, 11, 16, 4  # 11 saves: the last chunk is an edge chunk
    values = chaotic_field((members, n_times, state_size), dtype)
    writer = make_writer(tmp_path / "u.nc", members=members, n_times=n_times, state_size=state_size, dtype=dtype,
                         level=level, time_chunk=time_chunk)
    for start in range(0, n_times, time_chunk):
        block = encode_block(values[:, start:start + time_chunk], 0, start, writer.layout)
        writer.write_encoded(block)
    path = writer.commit(np.zeros(members, np.int8), np.full(members, np.nan), {"note": "direct"})
    with netCDF4.Dataset(path) as dataset:
        u = dataset.variables["u"]
        assert u.filters()["zlib"] == (level > 0) and u.filters()["shuffle"] == (level > 0)
        np.testing.assert_array_equal(np.asarray(u[:]), values)
        assert dataset.note == "direct"
    with xr.open_dataset(path) as opened:
        np.testing.assert_array_equal(opened.u.values, values)
        assert opened.u.dtype == dtype


def test_encoding_inverts_the_chunks_hdf5_compressed_itself(tmp_path):
    """HDF5 (through netCDF4's ordinary write) compresses the chunks; decoding them with our inverse
    filters gives the data back, so our shuffle byte order and zlib framing are HDF5's."""
    members, n_times, state_size, time_chunk = 2, 8, 32, 4
    values = chaotic_field((members, n_times, state_size), np.float64, seed=3)
    path = tmp_path / "reference.nc"
    with netCDF4.Dataset(path, "w") as dataset:
        for name, size in (("member", members), ("time", n_times), ("x", state_size)):
            dataset.createDimension(name, size)
        u = dataset.createVariable("u", np.float64, ("member", "time", "x"), chunksizes=(1, time_chunk, state_size),
                                   zlib=True, complevel=4, shuffle=True, fill_value=np.nan)
        u[:] = values
    layout = ChunkLayout.for_output(n_times=n_times, time_chunk=time_chunk, state_size=state_size, dtype=np.float64,
                                    compression_level=4)
    with h5py.File(path, "r") as file:
        for member in range(members):
            for start in range(0, n_times, time_chunk):
                mask, stored = file["u"].id.read_direct_chunk((member, start, 0))
                assert mask == 0  # every filter applied
                np.testing.assert_array_equal(decode_chunk(stored, layout), values[member, start:start + time_chunk])
                ours = encode_block(values[member:member + 1, start:start + time_chunk], member, start, layout)
                np.testing.assert_array_equal(decode_chunk(ours.chunks[0], layout), values[member, start:start + time_chunk])
    assert len(ours.chunks[0]) < layout.chunk_bytes  # smooth fields do shrink


def test_edge_chunk_is_padded_with_the_fill_value():
    layout = ChunkLayout.for_output(n_times=5, time_chunk=4, state_size=3, dtype=np.float32, compression_level=1)
    block = encode_block(np.ones((2, 1, 3), np.float32), 7, 4, layout)
    assert [offset for offset, _ in block.offsets()] == [(7, 4, 0), (8, 4, 0)]
    decoded = decode_chunk(block.chunks[1], layout)
    assert decoded.shape == (4, 3) and (decoded[0] == 1).all() and np.isnan(decoded[1:]).all()


def test_bad_blocks_are_refused_before_anything_is_stored():
    layout = ChunkLayout.for_output(n_times=8, time_chunk=4, state_size=3, dtype=np.float64, compression_level=4)
    with pytest.raises(ValueError, match="expected \\(members, times, 3\\)"):
        encode_block(np.zeros((1, 4, 2)), 0, 0, layout)
    with pytest.raises(ValueError, match="not within one chunk"):
        encode_block(np.zeros((1, 4, 3)), 0, 2, layout)  # straddles two chunks
    with pytest.raises(ValueError, match="not within one chunk"):
        encode_block(np.zeros((1, 5, 3)), 0, 0, layout)
    with pytest.raises(ValueError, match="zlib levels are 0-9"):
        ChunkLayout.for_output(n_times=8, time_chunk=4, state_size=3, dtype=np.float64, compression_level=12)
    # a time chunk longer than the file is clipped, as the writer clips it
    assert ChunkLayout.for_output(n_times=3, time_chunk=64, state_size=3, dtype=np.float64,
                                  compression_level=0).chunk_shape == (1, 3, 3)
