"""Truth files -> training windows on the host grid: checks, member-wise split, sub-grid filtering,
normalisation statistics."""
import numpy as np
import pytest
import torch

from hybridnde.config import parse_case
from hybridnde.data import WindowSet, load_training_data, normalization_statistics, split_members
from hybridnde.grids import restrict_to_grid
from hybridnde.io import DataError, write_netcdf
from hybridnde.simulate import simulate_case
from hybridnde.systems import build_host_solver
from solvers import TwoBody


def two_body_case(**sections):
    raw = {"system": {"name": "two_body"}, "time": {"dt": 0.01, "n_steps": 60},
           "initial_condition": {"members": 5}, "hybrid": {"setup": "neural_ode"}}
    for name, table in sections.items():
        raw.setdefault(name, {}).update(table)
    return parse_case(raw)


def ks_case(**sections):
    raw = {"system": {"name": "kuramoto_sivashinsky", "n_points": 32}, "time": {"dt": 0.25, "n_steps": 40},
           "initial_condition": {"members": 4}}
    for name, table in sections.items():
        raw.setdefault(name, {}).update(table)
    return parse_case(raw)


@pytest.fixture(scope="module")
def two_body_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "truth.nc"
    write_netcdf(simulate_case(two_body_case(), progress=False), path)
    return path


def test_windows_are_consecutive_samples_and_skip_non_finite_ones():
    trajectories = torch.arange(2 * 7 * 3, dtype=torch.float64).reshape(2, 7, 3)
    trajectories[1, 4] = float("nan")
    windows = WindowSet.build(trajectories, 3, stride=2)
    # member 0: starts 0, 2, 4; member 1: start 0 only (2 and 4 touch the NaN at time 4)
    assert windows.starts.tolist() == [[0, 0], [0, 2], [0, 4], [1, 0]]
    gathered = windows.gather()
    assert gathered.shape == (4, 3, 3)
    assert torch.equal(gathered[1], trajectories[0, 2:5]) and torch.equal(gathered[3], trajectories[1, 0:3])
    assert torch.equal(windows.gather(torch.tensor([2])), trajectories[0, 4:7].unsqueeze(0))
    assert len(WindowSet.build(trajectories, 8)) == 0


def test_member_split_holds_out_the_last_members():
    train, validation = split_members(np.arange(10), 0.2)
    assert train.tolist() == list(range(8)) and validation.tolist() == [8, 9]
    assert split_members(np.arange(3), 0.1)[1].tolist() == [2]  # at least one validates
    assert split_members(np.arange(1), 0.5)[1].tolist() == []
    assert split_members(np.arange(4), 0.0)[1].tolist() == []


def test_load_checks_and_splits_a_two_body_file(two_body_file):
    case = two_body_case(training={"validation_fraction": 0.4})
    data = load_training_data(two_body_file, case, window_length=3)
    assert data.train.shape == (3, 61, 4) and data.validation.shape == (2, 61, 4)
    assert data.train_members == (0, 1, 2) and data.validation_members == (3, 4)
    assert data.sample_interval == pytest.approx(0.01)
    assert len(data.checksum) == 64 and data.summary()["validation_members"] == [3, 4]
    # the stored states are the solver's
    reference = TwoBody(dt=0.01).rollout(data.train[:, 0], 60)
    torch.testing.assert_close(data.train, reference, rtol=1e-12, atol=1e-12)
    float32 = load_training_data(two_body_file, case, window_length=3, dtype=torch.float32)
    assert float32.train.dtype == torch.float32


def test_no_held_out_member_validates_on_the_training_members_and_says_why(two_body_file, caplog):
    with caplog.at_level("WARNING", logger="hybridnde"):
        data = load_training_data(two_body_file, two_body_case(training={"validation_fraction": 0.0}), window_length=3)
    assert data.validation_members == data.train_members == (0, 1, 2, 3, 4)
    assert "training.validation_fraction = 0 holds no member out" in caplog.text


@pytest.mark.parametrize("override, message", [
    ({"system": {"gravitational_parameter": 2.0}}, "system.gravitational_parameter"),
    ({"time": {"dt": 0.02, "n_steps": 30}}, "time.dt"),
])
def test_data_from_another_set_up_is_refused(two_body_file, override, message):
    with pytest.raises(DataError, match=message):
        load_training_data(two_body_file, two_body_case(**override), window_length=3)


def test_data_simulated_with_other_settings_train_with_a_warning_naming_them(two_body_file, caplog):
    """A truth from other [time] or [initial_condition] settings (a forgotten --quick, another case's data)
    trained without a word; its system and sampling still have to fit. Where it ran is not a difference."""
    with caplog.at_level("WARNING", logger="hybridnde"):
        load_training_data(two_body_file, two_body_case(), window_length=3)
        load_training_data(two_body_file, two_body_case(compute={"device": "cpu"}), window_length=3)
    assert "other settings" not in caplog.text
    with caplog.at_level("WARNING", logger="hybridnde"):
        load_training_data(two_body_file, two_body_case(time={"n_steps": 80}, initial_condition={"seed": 3}),
                           window_length=3)
    assert "was simulated with other settings than this case's: time.n_steps (60 -> 80); " \
        "initial_condition.seed (0 -> 3); training uses the file as it is" in caplog.text


def test_data_of_another_system_or_grid_is_refused(tmp_path, two_body_file):
    with pytest.raises(DataError, match="needs u\\(member, time, x\\)"):
        load_training_data(two_body_file, ks_case(), window_length=3)
    with pytest.raises(DataError, match="window"):
        load_training_data(two_body_file, two_body_case(), window_length=100)
    ks_file = tmp_path / "ks.nc"
    write_netcdf(simulate_case(ks_case(), progress=False), ks_file)
    with pytest.raises(DataError, match="grid points"):
        load_training_data(ks_file, ks_case(system={"n_points": 64}), window_length=3)
    with pytest.raises(DataError, match="no such file"):
        load_training_data(tmp_path / "missing.nc", two_body_case(), window_length=3)


def test_sub_grid_case_trains_on_the_filtered_truth(tmp_path):
    case = ks_case(hybrid={"system": {"n_points": 16}})
    path = tmp_path / "ks.nc"
    dataset = simulate_case(case, progress=False)
    write_netcdf(dataset, path)
    data = load_training_data(path, case, window_length=3)
    assert data.train.shape[-1] == 16
    expected = restrict_to_grid(dataset["u"].values[: len(data.train_members)], 16)
    np.testing.assert_allclose(data.train.numpy(), expected, rtol=1e-12, atol=1e-12)


def test_normalization_statistics_fit_the_closure_target():
    truth = TwoBody(dt=1e-3)
    u0 = torch.tensor([[0.4, 0.0, 0.0, 2.0], [0.3, 0.0, 0.0, 2.3]], dtype=torch.float64)
    trajectories = truth.rollout(u0, 3000)
    # neural ODE: the target is du/dt itself
    stats = normalization_statistics(trajectories, lambda t, u: torch.zeros_like(u), 1e-3, per_component=True)
    states = trajectories[:, 1:-1].reshape(-1, 4)
    exact_target = truth.known_rhs(torch.zeros(()), states)
    torch.testing.assert_close(stats["input_shift"], states.mean(0))
    torch.testing.assert_close(stats["output_shift"], exact_target.mean(0), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(stats["output_scale"], exact_target.std(0), rtol=1e-4, atol=1e-4)
    # all physics known: the residual target vanishes up to the difference quotient's error
    residual = normalization_statistics(trajectories, truth.known_rhs, 1e-3, per_component=False)
    assert residual["output_scale"].shape == (1,) and float(residual["output_scale"]) < 1e-3


def test_host_of_a_residual_ks_case_is_the_coarse_solver():
    case = ks_case(hybrid={"system": {"n_points": 16, "nonlinear_coefficient": 0.0}})
    host = build_host_solver(case)
    assert host.state_shape == (16,) and host.nonlinear_coefficient == 0.0


def test_the_validation_share_rounds_to_the_nearest_member():
    assert len(split_members(np.arange(10), 0.19)[1]) == 2  # 1.9 members -> 2 (int() gave 1)


def test_window_sets_refuse_arguments_that_gave_silent_nonsense():
    """length 0 gave 72 windows, (time, state) data was read as members and gave none, numpy arrays
    raised a bare TypeError, and an empty member axis failed later in a reshape."""
    data = torch.randn(2, 10, 3, dtype=torch.float64)
    with pytest.raises(ValueError, match="at least 2 samples"):
        WindowSet.build(data, 0)
    with pytest.raises(ValueError, match="stride"):
        WindowSet.build(data, 3, stride=0)
    with pytest.raises(ValueError, match=r"shape \(10, 3\).*trajectories\[None\]"):
        WindowSet.build(data[0], 3)
    with pytest.raises(TypeError, match="torch.as_tensor"):
        WindowSet.build(data.numpy(), 3)
    with pytest.raises(ValueError, match="no members"):
        WindowSet.build(data[:0], 3)
    assert len(WindowSet.build(data, 11)) == 0  # longer than the data: none (the trainer says why)
    assert len(WindowSet.build(data, 10)) == 2 and len(WindowSet.build(data, 3, stride=4)) == 2 * 2


def test_the_data_checksum_is_of_the_numbers_not_of_the_bytes(two_body_file, tmp_path):
    """Written again with another history, compression and chunking: other bytes, the same data
    checksum (any block size). One changed value, or another configuration checksum: another one."""
    import xarray as xr

    from hybridnde.data import data_checksum, file_checksum

    with xr.open_dataset(two_body_file) as dataset:
        dataset = dataset.load()
    assert [str(c) for c in dataset["component"].values][:2] == ["x", "y"]  # strings are hashed too
    again = tmp_path / "again.nc"
    write_netcdf(dataset.assign_attrs(history="written again", wall_seconds=99.0), again,
                 compression_level=9, time_chunk=7)
    reference = data_checksum(two_body_file)
    assert file_checksum(again) != file_checksum(two_body_file)
    assert data_checksum(again) == reference == data_checksum(two_body_file, block_bytes=1)
    for changed in (dataset.assign_attrs(config_checksum="another"),
                    dataset.assign(u=dataset["u"].where(dataset["u"] != dataset["u"][2, 5, 1], 0.5)),
                    dataset.assign_coords(component=["x", "y", "vx", "vz"]),
                    dataset.isel(time=slice(0, -1))):
        write_netcdf(changed, again)
        assert data_checksum(again) != reference
    (tmp_path / "text.nc").write_text("not NetCDF")
    with pytest.raises(DataError, match="text.nc: not a readable NetCDF file"):
        data_checksum(tmp_path / "text.nc")


def test_the_data_checksum_sees_packing_and_not_byte_order(tmp_path):
    """Values packed with another scale_factor decode to other numbers (they hashed alike: only the stored
    integers were read); the same numbers stored big-endian are the same data (they hashed apart)."""
    import netCDF4

    from hybridnde.data import data_checksum

    def write(name: str, *, scale: float = 0.01, endian: str = "native", dtype: str = "i2") -> str:
        path = tmp_path / name
        with netCDF4.Dataset(path, "w") as dataset:
            dataset.createDimension("member", 3)
            variable = dataset.createVariable("u", dtype, ("member",), endian=endian)
            if dtype == "i2":
                variable.scale_factor = scale
            variable.set_auto_maskandscale(False)
            variable[:] = np.array([3, 4, 5], dtype=dtype)
        return data_checksum(path)

    assert write("a.nc") != write("b.nc", scale=0.02)
    assert write("little.nc", dtype="f8", endian="little") == write("big.nc", dtype="f8", endian="big")


def _file(path, build):
    """A NetCDF file ``build(dataset)`` fills."""
    import netCDF4

    with netCDF4.Dataset(path, "w") as dataset:
        build(dataset)
    return path


def test_the_closure_checksum_attribute_is_part_of_the_data(tmp_path):
    from hybridnde.data import data_checksum

    def make(name, closure):
        def build(dataset):
            dataset.createDimension("member", 2)
            dataset.createVariable("u", "f8", ("member",))[:] = [1.0, 2.0]
            dataset.closure_checksum = closure
        return data_checksum(_file(tmp_path / name, build))

    assert make("a.nc", "aaaa") != make("b.nc", "bbbb")


def test_packed_values_with_another_add_offset_are_other_data(tmp_path):
    from hybridnde.data import data_checksum

    def make(name, offset):
        def build(dataset):
            dataset.createDimension("member", 3)
            variable = dataset.createVariable("u", "i2", ("member",))
            variable.scale_factor, variable.add_offset = 0.01, offset
            variable.set_auto_maskandscale(False)
            variable[:] = np.array([3, 4, 5], dtype="i2")
        return data_checksum(_file(tmp_path / name, build))

    assert make("a.nc", 0.0) != make("b.nc", 1.0)


def test_strings_are_hashed_with_their_ends(tmp_path):
    from hybridnde.data import data_checksum

    def make(name, names):
        def build(dataset):
            dataset.createDimension("component", 2)
            variable = dataset.createVariable("component", str, ("component",))
            variable[:] = np.array(names, dtype=object)
        return data_checksum(_file(tmp_path / name, build))

    assert make("a.nc", ["ab", "c"]) != make("b.nc", ["a", "bc"])


def test_the_same_values_along_other_dimensions_are_other_data(tmp_path):
    from hybridnde.data import data_checksum

    def make(name, dims):
        def build(dataset):
            dataset.createDimension("member", 2)
            dataset.createDimension("time", 2)
            dataset.createVariable("u", "f8", dims)[:] = np.array([[1.0, 2.0], [3.0, 4.0]])
        return data_checksum(_file(tmp_path / name, build))

    assert make("a.nc", ("member", "time")) != make("b.nc", ("time", "member"))


def test_scalar_variables_are_hashed(tmp_path):
    from hybridnde.data import data_checksum

    def make(name, value):
        def build(dataset):
            dataset.createVariable("dt", "f8", ())[...] = value
        return data_checksum(_file(tmp_path / name, build))

    assert make("a.nc", 0.1) != make("b.nc", 0.2)


def test_the_data_checksum_format_stays_the_same_across_versions(tmp_path):
    """Outputs, closures and checkpoints record the data checksum of their inputs, and ``run`` reuses a
    stage only while it matches: a silent change of what is hashed (the attributes' text, strings' text,
    masking or unpacking on read, byte order) would remake every user's stages after an upgrade. Its
    value for a file of every kind of variable is fixed here; change it only deliberately, saying so."""

    from hybridnde.data import data_checksum

    def build(dataset):
        dataset.config_checksum, dataset.history = "0123abcd", "not hashed"
        for name, size in (("member", 2), ("time", 3), ("component", 2), ("chars", 2)):
            dataset.createDimension(name, size)
        time = dataset.createVariable("time", "f8", ("time",))
        time.units, time.calendar = "days since 2000-01-01", "proleptic_gregorian"
        time[:] = [0.0, 0.5, 1.0]
        packed = dataset.createVariable("u", ">i2", ("member", "time"), fill_value=np.int16(-32767), endian="big")
        packed.scale_factor, packed.add_offset, packed.missing_value = 0.01, 1.5, np.int16(-32000)
        packed.set_auto_maskandscale(False)  # a fill and a missing value among the stored integers
        packed[:] = np.array([[1, -2, 3], [-32767, 5, -32000]], dtype="i2")
        dataset.createVariable("component", str, ("component",))[:] = np.array(["x", "vx"], dtype=object)
        dataset.createVariable("label", "S1", ("component", "chars"))[:] = np.array([[b"a", b"b"], [b"c", b""]])
        dataset.createVariable("dt", "f4", ())[...] = 0.25

    assert data_checksum(_file(tmp_path / "every_kind.nc", build)) == \
        "fb6e2295aa72d57cd16e02dfaf49f9ab6d3d8fbf1ab9997212c2498518bda3d0"


def test_every_block_size_reads_every_value(tmp_path):
    """Blocks of several rows (not only one row, or the whole variable) are read whole."""
    from hybridnde.data import data_checksum

    def build(dataset):
        dataset.createDimension("member", 5)
        dataset.createDimension("time", 3)
        dataset.createVariable("u", "f8", ("member", "time"))[:] = np.arange(15.0).reshape(5, 3)
        dataset.createVariable("member", "i8", ("member",))[:] = np.arange(5)

    path = _file(tmp_path / "a.nc", build)
    whole = data_checksum(path)
    assert {data_checksum(path, block_bytes=size) for size in (1, 16, 48, 100, 1 << 20)} == {whole}


def test_training_data_are_made_from_a_checksum_of_their_files_bytes(tmp_path):
    from hybridnde.data import TrainingData, file_checksum

    path = tmp_path / "truth.nc"
    path.write_bytes(b"some bytes")
    empty = torch.zeros(0, 2, 1)
    data = TrainingData(train=empty, validation=empty, train_members=(), validation_members=(), sample_interval=1.0,
                        path=str(path), checksum="d" * 64)
    assert data.made_from("d" * 64) and data.made_from(file_checksum(path))
    assert not data.made_from("e" * 64) and not data.made_from("") and not data.made_from(None)


@pytest.mark.parametrize("first, second", [
    (dict(name="u"), dict(name="v")),  # the same values under another name (u and v swapped)
    (dict(fill_value=-1), dict(fill_value=-2)),  # decode to other masked values
    (dict(missing_value=4), dict(missing_value=5)),
    (dict(units="days since 2000-01-01"), dict(units="hours since 2000-01-01")),
    (dict(calendar="standard"), dict(calendar="noleap")),
    (dict(shape=(2, 3)), dict(shape=(3, 2))),
    (dict(kind="i4"), dict(kind="f4")),  # the same bytes, other numbers
])
def test_the_data_checksum_tells_apart_what_decodes_to_other_data(tmp_path, first, second):
    """A stage's output is reused only while its input's data checksum is unchanged: each of these is
    other data (mutation audit, helper-98)."""
    from hybridnde.data import data_checksum

    def make(file_name, **spec):
        def build(dataset):
            shape, kind = spec.get("shape", (2, 3)), spec.get("kind", "i2")
            dataset.createDimension("member", shape[0])
            dataset.createDimension("time", shape[1])
            variable = dataset.createVariable(spec.get("name", "u"), kind, ("member", "time"),
                                              fill_value=spec.get("fill_value"))
            for key in ("missing_value", "units", "calendar"):
                if key in spec:
                    variable.setncattr(key, spec[key])
            variable.set_auto_maskandscale(False)
            values = np.arange(6).reshape(shape)
            variable[:] = values.astype(np.int32).view(np.float32) if kind == "f4" else values  # (i4's bytes)
        return _file(tmp_path / file_name, build)

    assert data_checksum(make("a.nc", **first)) != data_checksum(make("b.nc", **second))


def test_normalization_of_a_single_state_has_scale_one_not_nan():
    """One member, three samples: one central difference. Its std was NaN, every closure output NaN, and
    training stopped with advice to lower the learning rate (helper-114's review)."""
    trajectories = torch.arange(9, dtype=torch.float64).reshape(1, 3, 3)
    stats = normalization_statistics(trajectories, lambda t, u: torch.zeros_like(u), 0.1, per_component=True)
    assert all(torch.isfinite(value).all() for value in stats.values())
    torch.testing.assert_close(stats["input_scale"], torch.ones(3, dtype=torch.float64))
    torch.testing.assert_close(stats["input_shift"], torch.tensor([3.0, 4.0, 5.0], dtype=torch.float64))
    torch.testing.assert_close(stats["output_shift"], torch.full((3,), 30.0, dtype=torch.float64))  # (6 - 0) / 0.2


def test_a_field_on_another_domain_length_is_refused_as_a_rollouts_states_are(tmp_path):
    """A file of another tool (no stored case) with the case's points but twice its domain trained
    silently; the rollout refused the same file (helper-114's review)."""
    case = ks_case()
    dataset = simulate_case(case, progress=False)
    dataset.attrs.pop("case_toml", None)
    write_netcdf(dataset.assign_coords(x=dataset["x"] * 2.0), tmp_path / "longer.nc")
    with pytest.raises(DataError, match=r"longer.nc: its domain length 44 differs from the case's system.domain_length "
                                        r"= 22"):
        load_training_data(tmp_path / "longer.nc", case, window_length=3)
    write_netcdf(dataset, tmp_path / "same.nc")
    assert load_training_data(tmp_path / "same.nc", case, window_length=3).train.shape[-1] == 32
