"""A partial file left damaged by a kill is rebuilt from its chunk journal, never resumed wrong.

The kills are replayed, not raced: the writer's file goes through h5py's ``fileobj`` driver, which
logs every write HDF5 makes, and a SIGKILL after the k-th write leaves exactly the first k on disk
(the page cache keeps what the process wrote; the kill cuts only what it had yet to write). So every
moment a kill can land between two checkpoints is one prefix of the log.
"""
from __future__ import annotations

import io
import os
import zlib
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from hybridnde import netcdf_stream
from hybridnde.io import ResumeRefused
from hybridnde.netcdf_stream import TrajectoryStreamWriter, checkpoint_path, partial_path
from conftest import break_chunk_index
from hybridnde.partial_repair import RECORD_KEY, ChunkJournal, check_chunk_index, inspect_partial, journal_path

SAVES, TIME_CHUNK, N, BATCH = 60, 10, 32, 3


class _LoggedFile(io.FileIO):
    """A file whose writes and truncations are appended to ``log`` as (offset, bytes or None, size)."""

    def __init__(self, path, log):
        super().__init__(path, "r+")
        self.log = log

    def write(self, data):
        self.log.append((self.tell(), bytes(data), None))
        return super().write(data)

    def truncate(self, size=None):
        self.log.append((self.tell() if size is None else size, None, size))
        return super().truncate(size)


def _writer(out, members, *, time_chunk=TIME_CHUNK, **kwargs):
    return TrajectoryStreamWriter(
        out, members=np.arange(members), times=np.arange(SAVES) * 0.1, state_dim="x", state_coords=np.arange(N) * 0.5,
        state_shape=(N,), dtype=np.dtype("float64"), title="t", solver="s", closure_checksum="none", case_toml="",
        extra_attrs={}, compression_level=4, time_chunk=time_chunk, **kwargs)


def _units(members):
    """(first member, first save) of each batch-by-chunk block, in the order a rollout writes them."""
    return [(batch, chunk) for batch in range(0, members, BATCH) for chunk in range(0, SAVES, TIME_CHUNK)]


def blowing_up(members, seed):
    """``(members, SAVES, N)`` values, every 4th member all NaN (blown up: tiny chunks, alike)."""
    data = np.random.default_rng(seed).standard_normal((members, SAVES, N))
    data[::4] = np.nan
    return data


def _status(data, index):
    """status and blowup_time after unit ``index``: a NaN member is marked once a unit of it is written,
    so both change from checkpoint to checkpoint (and their compressed chunks move)."""
    status, blowup_time = np.zeros(len(data), np.int8), np.full(len(data), np.nan)
    for member, save in _units(len(data))[:index + 1]:
        for m in range(member, member + BATCH):
            if np.isnan(data[m]).all() and status[m] == 0:
                status[m], blowup_time[m] = 1, 0.1 * save
    return status, blowup_time


def _write_unit(writer, data, unit, index):
    member, save = unit
    writer.write(member, save, data[member:member + BATCH, save:save + TIME_CHUNK])
    writer.checkpoint(*_status(data, index), {"done": index})
    writer.flush()


def logged_history(out, data, monkeypatch):
    """Write every unit of ``data: (members, saves, N)``, a checkpoint after each, through a logging file.
    Returns the file's bytes when streaming starts, the log, and per checkpoint (log length after it,
    the checkpoint's bytes, the chunk journal's bytes)."""
    log, checkpoints = [], []
    real_file = h5py.File

    def logged(name, mode="r", **options):  # the writer's own open, after netCDF4 made the file
        if mode != "r+":
            return real_file(name, mode, **options)
        return real_file(_LoggedFile(name, log), mode, driver="fileobj", **options)

    with monkeypatch.context() as patch:
        patch.setattr(h5py, "File", logged)
        writer = _writer(out, len(data))
        start = partial_path(out).read_bytes()  # (HDF5 wrote nothing on opening it)
        del log[:]
        for index, unit in enumerate(_units(len(data))):
            _write_unit(writer, data, unit, index)
            checkpoints.append((len(log), checkpoint_path(out).read_bytes(), journal_path(out).read_bytes()))
        writer.close()
    return start, log, checkpoints


def killed_after(out, start, log, writes, checkpoint):
    """Leave at ``out`` what a kill after the first ``writes`` of ``log`` leaves, with ``checkpoint``
    (its bytes and its journal's; the journal as the next checkpoint appended to it: a kill before the
    checkpoint's rename leaves those rows, which the resume drops)."""
    with open(partial_path(out), "wb") as file:
        file.write(start)
        for offset, data, size in log[:writes]:
            file.seek(offset)
            file.write(data) if data is not None else file.truncate(size)
    checkpoint_path(out).write_bytes(checkpoint[0])
    journal_path(out).write_bytes(checkpoint[1])


def recorded_journal(out):
    """The checkpoint's record at ``out`` and the journal it vouches for (``None``: not that journal)."""
    record = torch.load(checkpoint_path(out), weights_only=True)[RECORD_KEY]
    return record, ChunkJournal.resumed(journal_path(out), record)


def resume_one_more_unit(out, data, index):
    """Resume after checkpoint ``index``, write the next unit, and say whether every unit up to it holds
    its data (the file otherwise as the writer left it)."""
    record = torch.load(checkpoint_path(out), weights_only=True).get(RECORD_KEY)
    writer = _writer(out, len(data), resume=True, record=record)
    units = _units(len(data))[:index + 2]
    _write_unit(writer, data, units[-1], index + 1)
    writer.close()
    with h5py.File(partial_path(out), "r") as file:
        u, status, blowup_time = file["u"][...], file["status"][...], file["blowup_time"][...]
    expected = _status(data, index + 1)
    return (all(np.array_equal(u[m:m + BATCH, s:s + TIME_CHUNK], data[m:m + BATCH, s:s + TIME_CHUNK], equal_nan=True)
                for m, s in units)
            and np.array_equal(status, expected[0]) and np.array_equal(blowup_time, expected[1], equal_nan=True))


#: a longer replay on demand: every checkpoint of a file this many members (120: ~1 minute, 2,493 moments)
LONG_REPLAY_MEMBERS = int(os.environ.get("HYBRIDNDE_KILL_REPLAY_MEMBERS", "0"))


@pytest.mark.parametrize("members, every_checkpoint",
                         [(72, False), (12, True)] + ([(LONG_REPLAY_MEMBERS, True)] if LONG_REPLAY_MEMBERS else []))
def test_every_kill_between_two_checkpoints_resumes_to_the_same_data(tmp_path, monkeypatch, caplog, members,
                                                                       every_checkpoint):
    """Before the journal, a kill inside a checkpoint's flush left the index newer than the superblock's
    end of allocation (1 write in 8) or, at a B-tree split, pointing at a node not yet written (3 in
    10): the resume refused the file. Now each such file is rebuilt, and all resume to the same data.
    72 members: 432 chunks, the index splits several times (those checkpoints are replayed); 12: every
    checkpoint, with the status moving (a kill could leave its index past the end of allocation, and
    the resume then put u's chunks where the status is next written: wrong data, or a crash in HDF5)."""
    data = blowing_up(members, 0)
    out = tmp_path / "r.nc"
    start, log, checkpoints = logged_history(out, data, monkeypatch)
    sizes = np.diff([0] + [end for end, _, _ in checkpoints])
    # the checkpoint after a split writes more index nodes; replay those, and two ordinary ones
    stops = range(len(checkpoints)) if every_checkpoint else sorted({0, 1, *np.argsort(sizes[1:-1])[-3:] + 1})
    assert every_checkpoint or max(sizes[1:]) > min(sizes[1:]), "no B-tree split to replay"
    rebuilt = replayed = 0
    for index in [stop for stop in stops if stop < len(checkpoints) - 1]:
        begin, end = checkpoints[index][0], checkpoints[index + 1][0]
        # (after the flush's last write, the journal may have the next checkpoint's rows already)
        kills = [(writes, checkpoints[index][2]) for writes in range(begin, end + 1)] + [(end, checkpoints[index + 1][2])]
        replayed += len(kills)
        for writes, journal in kills:
            killed_after(out, start, log, writes, (checkpoints[index][1], journal))
            caplog.clear()
            assert resume_one_more_unit(out, data, index), (index, writes - begin)
            rebuilt += "rebuilt from the" in caplog.text
    assert rebuilt >= 2  # the damage this test is about did happen (one window per split, one per flush)
    if LONG_REPLAY_MEMBERS:  # (said with -s)
        print(f"\n{members} members: {len(checkpoints)} checkpoints, {replayed} kill moments, {rebuilt} rebuilt")


def test_a_damaged_file_is_refused_without_a_record_and_when_a_recorded_chunk_changed(tmp_path, monkeypatch):
    members = 6
    data = blowing_up(members, 1)
    out = tmp_path / "r.nc"
    start, log, checkpoints = logged_history(out, data, monkeypatch)
    index = 4
    # the kill inside the flush: the index written, the superblock (the flush's last write) not yet
    killed_after(out, start, log, checkpoints[index + 1][0] - 2, checkpoints[index][1:])
    damage, _ = inspect_partial(partial_path(out), None, what="rollout")
    assert damage and "addr overflow" in damage
    damaged = partial_path(out).read_bytes()
    state = torch.load(checkpoint_path(out), weights_only=True)
    journal = journal_path(out).read_bytes()
    # a checkpoint of an earlier version (no record) cannot vouch for the chunks: refused as before
    with pytest.raises(ResumeRefused, match="partial file of the interrupted rollout is damaged .*addr overflow"):
        _writer(out, members, resume=True, record=None)
    # ... nor one whose journal is gone or is not the one it recorded
    for lost in (b"", journal[:-40], journal[:40] + bytes(40) + journal[80:]):
        journal_path(out).write_bytes(lost)
        with pytest.raises(ResumeRefused, match="addr overflow.*chunk journal .* is missing or not its checkpoint's; "
                                                "rerun without --resume$"):
            _writer(out, members, resume=True, record=state[RECORD_KEY])
    journal_path(out).write_bytes(journal)
    # a recorded chunk whose bytes are not what the journal recorded: refused, the file untouched
    member, save, offset, size, _ = np.frombuffer(journal, dtype="<i8").reshape(-1, 5)[3].tolist()
    tampered = bytearray(damaged)
    tampered[offset + size // 2] ^= 0xFF
    partial_path(out).write_bytes(bytes(tampered))
    with pytest.raises(ResumeRefused, match=rf"member {member}, save {save} is not intact\); rerun without --resume$"):
        _writer(out, members, resume=True, record=state[RECORD_KEY])
    assert partial_path(out).read_bytes() == bytes(tampered)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [partial_path(out).name, checkpoint_path(out).name, journal_path(out).name])
    # ... and another layout than the record's (a changed output.time_chunk) is refused, not rebuilt
    partial_path(out).write_bytes(damaged)
    with pytest.raises(ResumeRefused, match="output.time_chunk, output.compression_level or compute.dtype changed"):
        _writer(out, members, time_chunk=5, resume=True, record=state[RECORD_KEY])
    assert partial_path(out).read_bytes() == damaged
    # with its record, the same file is rebuilt and resumes to the same data
    assert resume_one_more_unit(out, data, index)
    # ... and the journal and the checkpoint's record say where the rebuild put the chunks: a later
    # damage is rebuilt again (before, the rebuilt file's chunks were elsewhere than the journal said,
    # and the next resume refused it for good)
    _, journal = recorded_journal(out)
    assert journal is not None and inspect_partial(partial_path(out), journal.table(), what="rollout")[0] is None
    with h5py.File(partial_path(out), "r") as file:
        indexed = {}
        file["u"].id.chunk_iter(lambda chunk: indexed.__setitem__(chunk.chunk_offset[:2], (chunk.byte_offset, chunk.size)))
    assert {(m, s): (offset, size) for m, s, offset, size, _ in journal.table().tolist()} == indexed
    assert break_chunk_index(partial_path(out))
    assert resume_one_more_unit(out, data, index + 1)


def test_check_chunk_index_finds_chunks_past_the_end(tmp_path):
    out = tmp_path / "r.nc"
    writer = _writer(out, 3)
    _write_unit(writer, np.ones((3, SAVES, N)), (0, 0), 0)
    writer.close()
    with h5py.File(partial_path(out), "r") as file:
        check_chunk_index(file["u"].id, partial_path(out).stat().st_size)  # whole
        with pytest.raises(ValueError, match=r"3 chunk\(s\) indexed past the file's 100 bytes"):
            check_chunk_index(file["u"].id, 100)


@pytest.mark.parametrize("state_size, level", [(32, 4), (3, 4), (64, 0), (3, 9)])
def test_the_journal_finds_every_chunk_where_the_index_has_it_without_asking_the_index(tmp_path, monkeypatch,
                                                                                     state_size, level):
    """Chunks above and below HDF5's 2 KiB block for small raw data, uncompressed ones, members whose
    saves are all NaN (chunks of a few dozen bytes, alike), and the status rewritten between: each is
    located by reading the file back, and the journal agrees with the index."""
    from hybridnde import partial_repair

    asked, real = [], partial_repair._stored_offset
    monkeypatch.setattr(partial_repair, "_stored_offset", lambda u, m, s: asked.append((m, s)) or real(u, m, s))
    members, saves, time_chunk = 20, 50, 7
    writer = TrajectoryStreamWriter(
        tmp_path / "r.nc", members=np.arange(members), times=np.arange(saves) * 0.1, state_dim="x",
        state_coords=np.arange(state_size) * 1.0, state_shape=(state_size,), dtype=np.dtype("float64"), title="t",
        solver="s", closure_checksum="none", case_toml="", extra_attrs={}, compression_level=level,
        time_chunk=time_chunk)
    rng = np.random.default_rng(2)
    status = np.zeros(members, np.int8)
    for member in range(0, members, 4):
        for save in range(0, saves, time_chunk):
            values = np.cumsum(rng.standard_normal((4, min(time_chunk, saves - save), state_size)), axis=1)
            values[: member % 3] = np.nan
            writer.write(member, save, values)
            status[member] = member % 3
            writer.checkpoint(status, np.where(status > 0, 1.0, np.nan), {})
    writer.flush()
    indexed = {}
    writer.u.id.chunk_iter(lambda chunk: indexed.__setitem__(chunk.chunk_offset[:2], [chunk.byte_offset, chunk.size]))
    journal = writer._journal.table()
    writer.close()
    assert asked == []
    assert len(journal) == len(indexed) == members * -(-saves // time_chunk)
    assert {(m, s): [offset, size] for m, s, offset, size, _ in journal.tolist()} == indexed


def test_a_journal_row_naming_an_identical_copy_is_corrected_not_taken_for_damage(tmp_path, caplog):
    """Blown-up members' chunks are byte for byte alike; the locator can take one for another (the
    review found 3 of 300 members so). A resume found the file "damaged", rebuilt it and then, the
    journal being stale, refused every later resume. Now such a row is accepted where its bytes are
    intact and the index's offsets are appended to the journal."""
    out, data = tmp_path / "r.nc", blowing_up(12, 3)
    writer = _writer(out, len(data))
    for index, unit in enumerate(_units(len(data))[:12]):
        _write_unit(writer, data, unit, index)
    writer.close()
    table = np.frombuffer(journal_path(out).read_bytes(), dtype="<i8").reshape(-1, 5).copy()
    first, second = [i for i in range(len(table)) if table[i, 0] % 4 == 0][:2]  # two NaN chunks, alike
    assert tuple(table[first, 3:]) == tuple(table[second, 3:]) and table[first, 2] != table[second, 2]
    table[[first, second], 2] = table[[second, first], 2]
    state = torch.load(checkpoint_path(out), weights_only=True)
    journal_path(out).write_bytes(table.tobytes())
    state[RECORD_KEY].update(journal_rows=len(table), journal_crc=zlib.crc32(table.tobytes()))
    torch.save(state, checkpoint_path(out))
    caplog.clear()
    assert resume_one_more_unit(out, data, 11)
    assert "damaged" not in caplog.text and "rebuilt" not in caplog.text
    _, journal = recorded_journal(out)
    assert journal is not None
    rows = {(m, s): offset for m, s, offset, _, _ in journal.table().tolist()}
    with h5py.File(partial_path(out), "r") as file:
        assert all(rows[key] == file["u"].id.get_chunk_info_by_coord((*key, 0)).byte_offset for key in rows)


def test_a_kill_between_the_rebuild_and_its_checkpoint_keeps_the_journal_usable(tmp_path, monkeypatch, caplog):
    """The rebuild's chunks are appended to the journal and then the checkpoint's record is rewritten. A
    kill in between (here: the rewrite fails) once left a journal replaced whole that the checkpoint no
    longer vouched for: later resumes went on without one, and a later damage was refused for good."""
    data = blowing_up(12, 4)
    out = tmp_path / "r.nc"
    start, log, checkpoints = logged_history(out, data, monkeypatch)
    index = 5
    killed_after(out, start, log, checkpoints[index + 1][0] - 2, checkpoints[index][1:])  # in the flush
    with monkeypatch.context() as patch:
        patch.setattr(netcdf_stream, "write_checkpoint", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt))
        with pytest.raises(KeyboardInterrupt):
            resume_one_more_unit(out, data, index)
    caplog.clear()
    assert resume_one_more_unit(out, data, index)  # the rebuilt file, its rows appended: no refusal
    assert "without one" not in caplog.text and "rebuilt" not in caplog.text
    assert break_chunk_index(partial_path(out))  # and a later damage is rebuilt again
    assert resume_one_more_unit(out, data, index + 1) and "rebuilt from the" in caplog.text


def test_a_fresh_start_removes_a_killed_rebuilds_temporary_file(tmp_path):
    """A rebuild killed before its rename leaves its new partial file under a temporary name; a run
    started afresh (not --resume) removed the restart files but not that, which is as large as the data."""
    from hybridnde.netcdf_stream import remove_restart_files
    from hybridnde.output_paths import _host_tag

    out = tmp_path / "r.nc"
    dead = 2 ** 22 + 12345  # (above Linux's default pid_max: no such process)
    orphan = tmp_path / f".{partial_path(out).name}.{_host_tag()}.{dead}.abc123.part"  # (atomic_path's name)
    orphan.write_bytes(b"a killed rebuild's file")
    keep = tmp_path / f".{partial_path(out).name}.{_host_tag()}.{os.getpid()}.abc123.part"  # a live writer's
    keep.write_bytes(b"")
    remove_restart_files(out)
    assert not orphan.exists() and keep.exists()


@pytest.mark.parametrize("lost", ["the journal", "the checkpoint's record"])
def test_a_whole_file_without_a_usable_journal_gets_a_new_one_from_its_index(tmp_path, monkeypatch, caplog, lost):
    """A journal deleted, or a checkpoint of a version before journals: the file is whole, so the resume
    makes a new journal from its index (each chunk read once for its CRC) instead of going on without
    one, and a later damage is rebuilt."""
    data = blowing_up(12, 5)
    out = tmp_path / "r.nc"
    start, log, checkpoints = logged_history(out, data, monkeypatch)
    index = 7
    killed_after(out, start, log, checkpoints[index + 1][0] - 6, checkpoints[index][1:])  # before the flush
    if lost == "the journal":
        journal_path(out).unlink()
    else:
        state = torch.load(checkpoint_path(out), weights_only=True)
        del state[RECORD_KEY]
        torch.save(state, checkpoint_path(out))
    caplog.set_level("INFO")
    assert resume_one_more_unit(out, data, index)
    assert "a new chunk journal, from its index" in caplog.text
    record, journal = recorded_journal(out)
    assert journal is not None and record["layout"]
    assert break_chunk_index(partial_path(out))
    caplog.clear()
    assert resume_one_more_unit(out, data, index + 1) and "rebuilt from the" in caplog.text


def test_the_journal_is_hidden_beside_its_output_and_keeps_each_chunks_last_row(tmp_path):
    """A chunk a rebuild or a resume stored again is appended; the table keeps its last row, in the order
    the rows were stored (a wrong pick would leave a chunk out of a rebuild, as NaN fill, or in twice)."""
    assert journal_path(tmp_path / "r.nc") == tmp_path / ".r.nc.chunks"  # hidden (docs/netcdf.md)
    journal = ChunkJournal(journal_path(tmp_path / "r.nc"))
    journal.amend(np.array([[0, 0, 100, 10, 1], [0, 10, 200, 10, 2], [3, 0, 300, 10, 3]]))
    journal.amend(np.array([[0, 10, 900, 10, 2]]))
    assert journal.table().tolist() == [[0, 0, 100, 10, 1], [3, 0, 300, 10, 3], [0, 10, 900, 10, 2]]
    assert ChunkJournal.resumed(journal.path, journal.record()).table().tolist() == journal.table().tolist()


def test_a_writer_leaves_no_descriptor_and_a_discarded_one_no_file(tmp_path):
    descriptors = Path("/proc/self/fd")
    before = len(list(descriptors.iterdir())) if descriptors.is_dir() else None
    for _ in range(3):
        writer = _writer(tmp_path / "r.nc", 3)
        _write_unit(writer, np.ones((3, SAVES, N)), (0, 0), 0)
        writer.discard()  # (a run failing before it finishes: its partial file and journal go)
        assert list(tmp_path.iterdir()) == [checkpoint_path(tmp_path / "r.nc")]  # (removed by the caller)
    if before is not None:
        assert len(list(descriptors.iterdir())) == before


def test_the_damage_message_names_a_lost_chunk_by_member_and_save(tmp_path):
    out, data = tmp_path / "r.nc", blowing_up(6, 7)
    writer = _writer(out, len(data))
    for index, unit in enumerate(_units(len(data))[:8]):
        _write_unit(writer, data, unit, index)
    writer.close()
    table = recorded_journal(out)[1].table()
    assert inspect_partial(partial_path(out), table, what="rollout")[0] is None
    never = np.array([[5, 50, 10**6, 100, 0]])  # a row for a chunk the index does not have
    damage, _ = inspect_partial(partial_path(out), np.vstack([table, never]), what="rollout")
    assert damage.startswith("is damaged (1 chunk(s)") and damage.endswith("e.g. member 5, save 50)")
    changed = table.copy()
    row = [i for i, (m, s) in enumerate(changed[:, :2].tolist()) if (m, s) == (1, 10)][0]
    changed[row, 2:5] += (1, 0, 1)  # elsewhere, and its bytes not what the index has there
    damage, _ = inspect_partial(partial_path(out), changed, what="rollout")
    assert damage.endswith("e.g. member 1, save 10)")


@pytest.mark.parametrize("what", ["rollout", "simulation"])
def test_a_partial_file_hdf5_cannot_open_is_rebuilt_from_its_journal(tmp_path, monkeypatch, what):
    """Its superblock overwritten: h5py cannot open it at all; the chunks are intact where the journal
    has them. The cause said with a damage is the one each kind of run meets."""
    data = blowing_up(12, 8)
    out = tmp_path / "r.nc"
    start, log, checkpoints = logged_history(out, data, monkeypatch)
    index = 6
    killed_after(out, start, log, checkpoints[index + 1][0] - 2, checkpoints[index][1:])
    damage = inspect_partial(partial_path(out), None, what=what)[0]
    assert "addr overflow" in damage and {"rollout": "Ctrl-C under mpiexec", "simulation": "SIGKILL"}[what] in damage
    with open(partial_path(out), "r+b") as file:
        file.write(bytes(512))
    assert inspect_partial(partial_path(out), None, what=what)[0].startswith("cannot be reopened (")
    assert resume_one_more_unit(out, data, index)


@pytest.mark.parametrize("case", ["rebuilt", "journal lost"])
def test_a_resume_killed_before_its_first_checkpoint_leaves_a_record_that_holds(tmp_path, monkeypatch, case):
    """Opening a resume rewrites the checkpoint's record when it rebuilt the file or made a new journal:
    a kill before the resumed run's own first checkpoint must leave a record that vouches for the file
    (its journal, its layout, its status), so that a damage then is rebuilt, not refused."""
    data = blowing_up(12, 6)
    out = tmp_path / "r.nc"
    start, log, checkpoints = logged_history(out, data, monkeypatch)
    index = 5
    if case == "rebuilt":
        killed_after(out, start, log, checkpoints[index + 1][0] - 2, checkpoints[index][1:])  # in the flush
    else:
        killed_after(out, start, log, checkpoints[index][0], checkpoints[index][1:])  # right after it: whole
        journal_path(out).unlink()
    state = torch.load(checkpoint_path(out), weights_only=True)
    _writer(out, len(data), resume=True, record=state[RECORD_KEY]).close()  # and killed: no checkpoint of its own
    record, journal = recorded_journal(out)
    assert record["layout"] == state[RECORD_KEY]["layout"]
    assert journal is not None and inspect_partial(partial_path(out), journal.table(), what="rollout")[0] is None
    with h5py.File(partial_path(out), "r") as file:  # a rebuild puts the checkpoint's status in
        status, blowup_time = file["status"][...], file["blowup_time"][...]
    assert status.any() and np.array_equal(record["status"].numpy(), status)
    assert np.array_equal(record["blowup_time"].numpy(), blowup_time, equal_nan=True)
    if case == "rebuilt":
        assert np.array_equal(status, _status(data, index)[0])
    assert break_chunk_index(partial_path(out))
    assert resume_one_more_unit(out, data, index)
