"""The NetCDF contract of docs/netcdf.md as a user reads it back: both writers' CF attributes and dtypes,
the partial file and its restart files, the final commit, and the chunk codec's bytes (a mutation audit
of netcdf_stream, chunk_codec and io found these properties unchecked)."""
from __future__ import annotations

import threading
import zlib

import numpy as np
import pytest
import torch
import xarray as xr

from hybridnde import netcdf_stream
from hybridnde.chunk_codec import ChunkLayout, decode_chunk, encode_block
from hybridnde.io import DataError, ResumeRefused, trajectory_dataset, write_netcdf
from hybridnde.netcdf_stream import (INCOMPLETE, TrajectoryStreamWriter, checkpoint_path, has_restart_files,
                                     partial_path, read_checkpoint, read_partial_attribute, remove_restart_files,
                                     write_checkpoint)
from hybridnde.rollout import SaveSchedule
from hybridnde.rollout_output import member_status

MEMBERS, SAVES, N, TIME_CHUNK = 3, 5, 4, 2  # 5 saves in chunks of 2: the last chunk is an edge chunk
TIMES = np.arange(SAVES) * 0.25
X = np.arange(N) * 0.5

#: the documented CF attributes of each variable (docs/netcdf.md), written out here, not taken from io
CF_ATTRS = {
    "u": {"long_name": "state", "units": "1"},
    "time": {"long_name": "time", "units": "1"},
    "x": {"long_name": "position on the periodic domain", "units": "1", "axis": "X"},
    "member": {"long_name": "global ensemble member index", "units": "1", "standard_name": "realization"},
    "status": {"long_name": "member status", "flag_values": [0, 1, 2], "flag_meanings": "ok blew_up nonfinite_input"},
    "blowup_time": {"long_name": "time at which the member blew up (NaN if it did not)", "units": "1"},
}


def stream_writer(out, *, level=4, members=MEMBERS, **kwargs) -> TrajectoryStreamWriter:
    return TrajectoryStreamWriter(
        out, members=np.arange(members), times=TIMES, state_dim="x", state_coords=X, state_shape=(N,),
        dtype=np.dtype(np.float64), title="t", solver="s", closure_checksum="abc123", case_toml="[case]\n",
        extra_attrs={"stage": "rollout"}, compression_level=level, time_chunk=TIME_CHUNK, **kwargs)


def field(members=MEMBERS, seed=0):
    return np.random.default_rng(seed).standard_normal((members, SAVES, N))


def streamed_file(out, values, *, level=4):
    """``values`` streamed chunk by chunk and committed with every member ok."""
    writer = stream_writer(out, level=level, members=len(values))
    for start in range(0, SAVES, TIME_CHUNK):
        writer.write(0, start, values[:, start:start + TIME_CHUNK])
    return writer.commit(np.zeros(len(values), np.int8), np.full(len(values), np.nan), {})


def cf_attrs(variable) -> dict:
    return {key: (value.tolist() if isinstance(value, np.ndarray) else value) for key, value in variable.attrs.items()}


@pytest.mark.parametrize("writer", ["stream", "write_netcdf"])
def test_both_writers_give_the_documented_cf_attributes_and_dtypes(tmp_path, writer):
    """Every variable reads back (xarray) with docs/netcdf.md's CF attributes, dtypes and no coordinate _FillValue."""
    values = field()
    if writer == "stream":
        path = streamed_file(tmp_path / "r.nc", values)
    else:
        dataset = trajectory_dataset(values, TIMES, state_dim="x", state_coords=X, solver="s", closure_checksum="abc123")
        path = write_netcdf(dataset, tmp_path / "r.nc")
    with xr.open_dataset(path) as ds:
        for name, expected in CF_ATTRS.items():
            assert cf_attrs(ds[name]) == expected, name
        assert {name: ds[name].dtype for name in ("member", "time", "x", "u", "status", "blowup_time")} == {
            "member": np.int64, "time": np.float64, "x": np.float64, "u": np.float64, "status": np.int8,
            "blowup_time": np.float64}
        for name in ("member", "time", "x"):  # CF: coordinate variables have no missing values
            assert "_FillValue" not in ds[name].encoding or ds[name].encoding["_FillValue"] is None, name
        assert np.isnan(ds.u.encoding["_FillValue"]) and np.isnan(ds.blowup_time.encoding["_FillValue"])
        assert ds.attrs["Conventions"] == "CF-1.10" and ds.attrs["closure_checksum"] == "abc123"
        assert ds.attrs["source"].endswith("; solver: s; closure checksum: abc123")
        np.testing.assert_array_equal(ds.u.values, values)
        # defaults of a file written without them: members 0..n-1, all ok, none blew up
        assert ds.member.values.tolist() == list(range(MEMBERS)) and ds.status.values.tolist() == [0] * MEMBERS
        assert np.isnan(ds.blowup_time.values).all()
        if writer == "stream":
            assert ds.attrs["stage"] == "rollout"  # the caller's extra attributes


@pytest.mark.parametrize("level", [0, 2])
def test_both_writers_compress_and_chunk_as_output_settings_say(tmp_path, level):
    """zlib at output.compression_level with shuffle on every data variable (none at 0); u in 1 member x time_chunk chunks."""
    import netCDF4

    values = field()
    streamed_file(tmp_path / "s.nc", values, level=level)
    write_netcdf(trajectory_dataset(values, TIMES, state_dim="x", state_coords=X), tmp_path / "w.nc",
                 compression_level=level, time_chunk=TIME_CHUNK)
    for name in ("s.nc", "w.nc"):
        with netCDF4.Dataset(tmp_path / name) as dataset:
            for variable in ("u", "status", "blowup_time"):
                filters = dataset.variables[variable].filters()
                compression = (filters["zlib"], filters["shuffle"], filters["complevel"])
                assert compression == (level > 0, level > 0, level), (name, variable)
            assert dataset.variables["u"].chunking() == [1, TIME_CHUNK, N], name
            np.testing.assert_array_equal(dataset.variables["u"][:], values)


def test_a_file_whose_u_is_not_member_by_time_is_refused(tmp_path):
    """open_trajectories refuses u(time, member, x): read as (member, time) it would swap members and saves."""
    from hybridnde.io import open_trajectories

    dataset = trajectory_dataset(field(), TIMES, state_dim="x", state_coords=X)
    dataset["u"] = dataset.u.transpose("time", "member", "x")
    write_netcdf(dataset, tmp_path / "swapped.nc")
    with pytest.raises(DataError, match=r"swapped.nc: expected a variable u\(member, time, x\|component\)"):
        open_trajectories(tmp_path / "swapped.nc")


def test_a_partial_file_reads_nan_and_ok_for_unfinished_members_and_says_it_is_incomplete(tmp_path):
    """Before its first checkpoint a partial file holds NaN u and status ok for members not yet written, and `incomplete`."""
    out, values = tmp_path / "r.nc", field()
    writer = stream_writer(out)
    writer.write(0, 0, values[:1, :TIME_CHUNK])
    writer.close()  # (an interruption: the partial file stays)
    with xr.open_dataset(partial_path(out)) as ds:
        assert ds.attrs["incomplete"] == INCOMPLETE
        np.testing.assert_array_equal(ds.u.values[0, :TIME_CHUNK], values[0, :TIME_CHUNK])
        assert np.isnan(ds.u.values[0, TIME_CHUNK:]).all() and np.isnan(ds.u.values[1:]).all()
        assert ds.status.values.tolist() == [0] * MEMBERS and np.isnan(ds.blowup_time.values).all()


def every_chunk_checkpointed(out, values):
    """A writer of ``out`` that has written every chunk of ``values`` and checkpointed them."""
    writer = stream_writer(out)
    for start in range(0, SAVES, TIME_CHUNK):
        writer.write(0, start, values[:, start:start + TIME_CHUNK])
    writer.checkpoint(np.zeros(MEMBERS, np.int8), np.full(MEMBERS, np.nan), {"done": 0})
    return writer


def test_commit_writes_the_final_status_and_history_and_drops_the_incomplete_mark(tmp_path):
    """The complete file has commit's status/blowup_time (not the last checkpoint's), both history lines, no `incomplete`."""
    out, values = tmp_path / "r.nc", field()
    writer = every_chunk_checkpointed(out, values)
    writer.commit(np.array([0, 1, 0], np.int8), np.array([np.nan, 0.5, np.nan]), {"wall_seconds": 2.5},
                  history="resumed 1 time(s), finished")
    assert not partial_path(out).exists()
    with xr.open_dataset(out) as ds:
        assert ds.status.values.tolist() == [0, 1, 0]
        np.testing.assert_array_equal(ds.blowup_time.values, [np.nan, 0.5, np.nan])
        assert "incomplete" not in ds.attrs and ds.attrs["wall_seconds"] == 2.5
        created, resumed = ds.attrs["history"].split("\n")
        assert " created by hybridnde " in created and resumed == "resumed 1 time(s), finished"


def test_a_checkpoint_puts_status_and_blowup_time_in_the_partial_file(tmp_path):
    """After a checkpoint the partial file itself holds that checkpoint's status and blowup_time (what a reader of it sees)."""
    out, values = tmp_path / "r.nc", field()
    writer = stream_writer(out)
    writer.write(0, 0, values[:, :TIME_CHUNK])
    writer.checkpoint(np.array([1, 0, 0], np.int8), np.array([0.25, np.nan, np.nan]), {"done": 0})
    writer.close()
    with xr.open_dataset(partial_path(out)) as ds:
        assert ds.status.values.tolist() == [1, 0, 0]
        np.testing.assert_array_equal(ds.blowup_time.values, [0.25, np.nan, np.nan])


def test_a_checkpoint_is_on_disk_when_it_is_written(tmp_path):
    """A copy of the partial file taken right after a checkpoint (what a kill leaves) reads back the checkpointed chunks."""
    out, values = tmp_path / "r.nc", field()
    writer = every_chunk_checkpointed(out, values)
    writer.flush()
    killed = tmp_path / "killed.nc"
    killed.write_bytes(partial_path(out).read_bytes())  # (the writer still holds its file open)
    try:
        with xr.open_dataset(killed) as ds:
            np.testing.assert_array_equal(ds.u.values, values)
    finally:
        writer.close()


def test_a_failed_write_is_raised_and_neither_checkpointed_nor_committed(tmp_path, monkeypatch):
    """A chunk write that fails stops the writer: the checkpoint queued after it is not written and commit raises."""
    gate = threading.Event()

    def failing_encode(*args, **kwargs):
        gate.wait(10)
        raise OSError(28, "No space left on device")

    out, values = tmp_path / "r.nc", field()
    writer = stream_writer(out)
    monkeypatch.setattr(netcdf_stream, "encode_block", failing_encode)
    writer.write(0, 0, values[:, :TIME_CHUNK])  # (held on the writer thread until the checkpoint is queued)
    writer.checkpoint(np.zeros(MEMBERS, np.int8), np.full(MEMBERS, np.nan), {"done": 0})
    gate.set()
    with pytest.raises(RuntimeError, match=r"writing .*\.r\.nc\.partial failed: .*No space left on device"):
        writer.flush()
    assert not checkpoint_path(out).exists()
    with pytest.raises(RuntimeError, match="No space left on device"):
        writer.commit(np.zeros(MEMBERS, np.int8), np.full(MEMBERS, np.nan), {})
    assert not out.exists() and partial_path(out).exists()
    writer.discard()


def test_the_restart_files_are_hidden_beside_the_output_and_removed_together(tmp_path):
    """The partial file, checkpoint and journal are `.NAME.partial/.checkpoint/.chunks`; only both first two resume; all go."""
    out = tmp_path / "r.nc"
    writer = stream_writer(out)
    writer.checkpoint(np.zeros(MEMBERS, np.int8), np.full(MEMBERS, np.nan), {"done": 0})
    writer.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == [".r.nc.checkpoint", ".r.nc.chunks", ".r.nc.partial"]
    assert has_restart_files(out)
    partial_path(out).rename(tmp_path / "elsewhere")
    assert not has_restart_files(out)  # a checkpoint alone starts from the beginning
    (tmp_path / "elsewhere").rename(partial_path(out))
    remove_restart_files(out)
    assert list(tmp_path.iterdir()) == []


def test_a_checkpoint_killed_while_written_leaves_the_previous_one(tmp_path, monkeypatch):
    """A checkpoint is replaced atomically: a write dying half-way leaves the previous checkpoint readable."""
    out = tmp_path / "r.nc"
    partial_path(out).write_bytes(b"")
    write_checkpoint(out, {"done": [0]})

    def dying_save(obj, target):
        with open(target, "wb") as half:
            half.write(b"PK\x03\x04 half a zip")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", dying_save)
    with pytest.raises(OSError, match="No space left"):
        write_checkpoint(out, {"done": [0, 1]})
    monkeypatch.undo()
    assert read_checkpoint(out)["done"] == [0]


def test_a_damaged_or_foreign_checkpoint_is_refused_not_taken_for_no_checkpoint(tmp_path):
    """A truncated checkpoint, or a torch file of something else, is a DataError naming it (not a silent fresh start)."""
    out = tmp_path / "r.nc"
    partial_path(out).write_bytes(b"")
    write_checkpoint(out, {"done": [0]})
    assert read_checkpoint(out) == {"format": netcdf_stream.CHECKPOINT_FORMAT, "done": [0]}
    checkpoint_path(out).write_bytes(checkpoint_path(out).read_bytes()[:40])
    with pytest.raises(DataError, match=r"\.r\.nc\.checkpoint: not a readable rollout checkpoint"):
        read_checkpoint(out)
    torch.save({"done": [0]}, checkpoint_path(out))
    with pytest.raises(DataError, match="not a hybridnde-rollout-checkpoint/1 file"):
        read_checkpoint(out)


def test_the_partial_files_text_attributes_read_back_as_text(tmp_path):
    """read_partial_attribute gives the case TOML as str; an unreadable partial file is a ResumeRefused, not `None`."""
    out = tmp_path / "r.nc"
    stream_writer(out).close()
    assert read_partial_attribute(out, "case_toml") == "[case]\n"
    assert read_partial_attribute(out, "no_such_attribute") is None
    partial_path(out).write_bytes(b"not hdf5")
    with pytest.raises(ResumeRefused, match="partial file of the interrupted simulation cannot be read"):
        read_partial_attribute(out, "case_toml", what="simulation")


def test_a_block_outside_u_is_refused_with_its_position(tmp_path):
    """Chunks for members or saves u does not have fail the writer with their position, not an HDF5 error."""
    from hybridnde.chunk_codec import EncodedBlock

    for member, save in ((MEMBERS, 0), (0, SAVES)):  # one member, one save past u
        writer = stream_writer(tmp_path / f"{member}-{save}.nc", level=0)
        chunk = np.zeros((TIME_CHUNK, N)).tobytes()
        writer.write_encoded(EncodedBlock(member_start=member, time_start=save, chunks=(chunk,)))
        with pytest.raises(RuntimeError, match=rf"chunks at member {member}, save {save} lie outside u \(3, 5\)"):
            writer.flush()
        writer.discard()


@pytest.mark.parametrize("level", [1, 4, 9])
def test_encoded_chunks_are_shuffled_then_deflated_at_the_asked_level(level):
    """A chunk's bytes are HDF5's shuffle (byte j of element i at j*n + i) then zlib at output.compression_level."""
    values = np.sin(np.linspace(0.0, 3.0, 2 * N)).reshape(1, 2, N)
    layout = ChunkLayout.for_output(n_times=SAVES, time_chunk=2, state_size=N, dtype=np.float64,
                                    compression_level=level)
    raw = values.astype("<f8").tobytes()
    n, size = values.size, 8
    shuffled = bytes(raw[i * size + j] for j in range(size) for i in range(n))
    assert encode_block(values, 0, 0, layout).chunks == (zlib.compress(shuffled, level),)


def test_a_block_running_past_the_last_save_is_refused():
    """A block with more saves than are left in the file raises, instead of silently dropping the extra saves."""
    layout = ChunkLayout.for_output(n_times=SAVES, time_chunk=TIME_CHUNK, state_size=N, dtype=np.float64,
                                    compression_level=4)
    with pytest.raises(ValueError, match="not within one chunk"):
        encode_block(np.zeros((1, TIME_CHUNK, N)), 0, 4, layout)
    decoded = decode_chunk(encode_block(np.ones((1, 1, N)), 0, 4, layout).chunks[0], layout)
    assert (decoded[0] == 1).all() and np.isnan(decoded[1:]).all()  # the edge chunk's one save, then fill


def test_member_status_marks_each_member_from_its_first_bad_save():
    """status is blew_up from the first bad save on (save 0 included), with blowup_time that save's time."""
    schedule = SaveSchedule(steps=8, save_every=2, time_chunk=2, dt=0.5, t0=1.0)
    status, blowup_time = member_status(np.array([-1, 0, 3]), schedule)
    assert status.dtype == np.int8 and status.tolist() == [0, 1, 1]
    np.testing.assert_array_equal(blowup_time, [np.nan, 1.0, 4.0])
