"""`hybridnde simulate` writes the NetCDF schema atomically; bad input exits 2 and leaves no file."""
import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import xarray as xr

from hybridnde.cli import main
from hybridnde.io import package_version
from solvers import Lorenz63

LORENZ = """
[case]
name = "lorenz_test"
[system]
name = "lorenz63"
[time]
dt = 0.01
n_steps = 200
save_every = 10
[initial_condition]
distribution = "gaussian"
value = [1.2, 2.1, 1.7]
std = [0.1]
members = 3
seed = 5
"""


def write_case(tmp_path, text=LORENZ):
    path = tmp_path / "case.toml"
    path.write_text(text)
    return path


def test_simulate_writes_cf_netcdf_matching_the_solver(tmp_path):
    out = tmp_path / "truth.nc"
    assert main(["simulate", str(write_case(tmp_path)), "--out", str(out)]) == 0
    with xr.open_dataset(out) as ds:
        # CF 2.6.2: the command that made it (a shell-quoted line the user can run again)
        assert ds.attrs["history"].endswith(f"created by hybridnde {package_version()}: hybridnde simulate "
                                            f"{shlex.quote(str(write_case(tmp_path)))} --out {shlex.quote(str(out))}")
        assert ds.u.dims == ("member", "time", "component")
        assert list(ds.component.values) == ["x", "y", "z"]
        assert ds.sizes == {"member": 3, "time": 21, "component": 3}
        assert ds.attrs["Conventions"] == "CF-1.10"
        assert "lorenz63" in ds.attrs["case_toml"] and "hybridnde" in ds.attrs["source"]
        # the code that made it: the version, and in a git checkout the commit (-dirty: uncommitted changes)
        from hybridnde import __version__

        assert ds.attrs["source"].startswith(f"hybridnde {package_version()};")
        root = Path(__file__).resolve().parents[1]
        readable = shutil.which("git") and subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"],
                                                          capture_output=True, check=False).returncode == 0
        if (root / ".git").exists() and readable:
            assert package_version().startswith(f"{__version__} (git ") and package_version().endswith(")")
        # what computed it: the last bits depend on the torch build, the device and the threads (--threads 1)
        assert ds.attrs["platform"].startswith(f"torch {torch.__version__} on cpu (")
        assert "), 1 torch thread(s); numpy" in ds.attrs["platform"]
        # the documented flags, pinned: files written earlier are read with these codes
        assert ds.status.attrs["flag_meanings"] == "ok blew_up nonfinite_input"
        assert ds.status.attrs["flag_values"].tolist() == [0, 1, 2] and ds.status.dtype == np.int8
        assert (ds.status.values == 0).all() and np.isnan(ds.blowup_time.values).all()
        assert ds.u.encoding["zlib"] and ds.time.attrs["long_name"] == "time"
        # nondimensional time: units "1" and no axis = "T", which CF reserves for "<unit> since <date>"
        assert ds.time.attrs["units"] == "1" and "axis" not in ds.time.attrs
        np.testing.assert_allclose(ds.time.values, np.arange(21) * 0.1, atol=1e-12)
        u = ds.u.values
    # same states as calling the solver directly from the stored initial states
    reference = Lorenz63(dt=0.01).rollout(torch.as_tensor(u[:, 0]), 200, save_every=10).numpy()
    np.testing.assert_allclose(u, reference, rtol=1e-12, atol=1e-12)
    # members draw from their own streams: different, reproducible
    assert not np.allclose(u[0, 0], u[1, 0])
    assert main(["simulate", str(write_case(tmp_path)), "--out", str(tmp_path / "again.nc")]) == 0
    with xr.open_dataset(tmp_path / "again.nc") as again:
        np.testing.assert_array_equal(again.u.values, u)


@pytest.mark.parametrize("override", ["time.dt=-1", "time.n_stepz=3", "initial_condition.std=[0.1, 0.2]",
                                      "system.name=lorenz"])
def test_bad_config_exits_2_and_leaves_no_file(tmp_path, override, capsys):
    out = tmp_path / "truth.nc"
    assert main(["simulate", str(write_case(tmp_path)), "--out", str(out), "--set", override]) == 2
    assert not out.exists()
    assert not list(tmp_path.glob("*.part"))
    assert override.split("=")[0].split(".")[-1][:6] in capsys.readouterr().err


def test_an_output_path_that_cannot_be_written_exits_2_before_simulating(tmp_path, capsys, monkeypatch):
    import hybridnde.simulate
    import hybridnde.simulation_job

    never = lambda *a, **k: pytest.fail("simulated before checking --out")  # noqa: E731
    monkeypatch.setattr(hybridnde.simulate, "simulate_case", never)
    monkeypatch.setattr(hybridnde.simulation_job, "run_simulation", never)
    case = write_case(tmp_path)
    (tmp_path / "folder.nc").mkdir()
    for out, message in [(tmp_path / "folder.nc", "is a folder; give a file name"),
                         (case / "truth.nc", "is a file, not a folder")]:
        assert main(["simulate", str(case), "--out", str(out)]) == 2
        error = capsys.readouterr().err
        assert f"--out {out}: " in error and message in error
    if os.path.isdir("/proc/self"):  # permission bits say yes (to root) where writing fails: tried
        assert main(["simulate", str(case), "--out", "/proc/no_such_folder/truth.nc"]) == 2
        assert "cannot write in /proc" in capsys.readouterr().err
    assert main(["run", str(case), "--out", str(case)]) == 2  # the run's folder is a file
    assert "is a file; give a folder" in capsys.readouterr().err
    assert sorted(path.name for path in tmp_path.iterdir()) == sorted(["folder.nc", case.name])


def test_initial_conditions_from_file(tmp_path):
    first = tmp_path / "first.nc"
    assert main(["simulate", str(write_case(tmp_path)), "--out", str(first)]) == 0
    text = LORENZ.replace('distribution = "gaussian"', f'distribution = "file"\nfile = "{first}"')
    second = tmp_path / "second.nc"
    assert main(["simulate", str(write_case(tmp_path, text)), "--out", str(second),
                 "--set", "initial_condition.members=2"]) == 0
    with xr.open_dataset(first) as a, xr.open_dataset(second) as b:
        np.testing.assert_array_equal(a.u.values[:2], b.u.values)
    assert main(["simulate", str(write_case(tmp_path, text)), "--out", str(tmp_path / "x.nc"),
                 "--set", "initial_condition.members=9"]) == 2
    before = first.read_bytes()
    assert main(["simulate", str(write_case(tmp_path, text)), "--out", str(first)]) == 2  # would replace its input
    assert first.read_bytes() == before


def test_a_simulation_from_a_file_keeps_its_member_labels_and_clock(tmp_path):
    """As a rollout from the file does: started from a truth's later states (members 10, 11, 12 from
    t = 0.5), the new trajectories pair with the file's in `evaluate` (same members, same times) and
    continue them exactly; a spin-up moves the start on by its steps."""
    first = tmp_path / "first.nc"
    assert main(["simulate", str(write_case(tmp_path)), "--out", str(first)]) == 0
    with xr.open_dataset(first) as data:
        late = data.isel(time=slice(5, None)).assign_coords(member=data.member.values + 10)
        late.to_netcdf(tmp_path / "late.nc")
        original = data.load()
    text = LORENZ.replace('distribution = "gaussian"', f'distribution = "file"\nfile = "{tmp_path / "late.nc"}"')
    for spinup, start in ((0, 0.5), (10, 0.6)):
        out = tmp_path / f"continued_{spinup}.nc"
        assert main(["simulate", str(write_case(tmp_path, text)), "--out", str(out), "--set", "time.n_steps=50",
                     "--set", f"time.spinup_steps={spinup}"]) == 0
        with xr.open_dataset(out) as continued:
            assert continued.member.values.tolist() == [10, 11, 12]
            np.testing.assert_allclose(continued.time.values, start + 0.1 * np.arange(6), rtol=0, atol=1e-12)
            if spinup == 0:  # the same steps as the first simulation took from t = 0.5
                np.testing.assert_array_equal(continued.u.values, original.u.values[:, 5:11])
    # drawn states have no clock: time 0 is the first saved state, after the spin-up
    assert main(["simulate", str(write_case(tmp_path)), "--out", str(tmp_path / "drawn.nc"),
                 "--set", "time.spinup_steps=10"]) == 0
    with xr.open_dataset(tmp_path / "drawn.nc") as drawn:
        assert drawn.time.values[0] == 0.0 and drawn.member.values.tolist() == [0, 1, 2]


@pytest.mark.parametrize("labels, problem", [([7, 3, 5], "not increasing"), ([2, 2, 9], "not unique")])
def test_initial_conditions_whose_member_labels_do_not_increase_exit_2(tmp_path, capsys, labels, problem):
    """Outputs keep the file's labels; unsorted or repeated ones broke CF's monotonic coordinate,
    xarray's .sel and combine_by_coords, and the member pairing of `evaluate` (exit 0 before)."""
    source = tmp_path / "labels.nc"
    xr.Dataset({"u": (("member", "component"), np.ones((3, 3)))}, coords={"member": labels}).to_netcdf(source)
    text = LORENZ.replace('distribution = "gaussian"', f'distribution = "file"\nfile = "{source}"')
    out = tmp_path / "out.nc"
    assert main(["simulate", str(write_case(tmp_path, text)), "--out", str(out)]) == 2
    error = capsys.readouterr().err
    assert problem in error and "ds.sortby('member')" in error and str(source) in error
    assert not out.exists()
    assert main(["rollout", str(write_case(tmp_path, LORENZ)), "--out", str(out), "--set", "rollout.members=3",
                 "--set", f'rollout.initial_conditions="{source}"', "--set", "hybrid.setup=\"residual\""]) == 2
    assert problem in capsys.readouterr().err and not out.exists()


def test_the_cf_descriptive_attributes_given_are_in_every_file_and_absent_otherwise(tmp_path):
    """CF 2.6.2's ``institution``, ``references`` and ``comment`` (``[output]``): in truths simulated with
    fixed steps (streamed) or adaptive ones (in memory) and in rollouts; no empty attributes where unset.
    They change no checksum: a file is not remade for them."""
    given = {"institution": "Lab of Closures, Somewhere", "references": "doi:10.1016/j.jcp.2024.0001",
             "comment": "made for a test; 'quoted' \"text\""}
    settings = [f"--set=output.{key}={json.dumps(value)}" for key, value in given.items()]  # TOML strings
    case = write_case(tmp_path)
    runs = {"rk4.nc": ["simulate", "--set", "time.integrator='rk4'"],
            "dopri5.nc": ["simulate", "--set", "time.integrator='dopri5'"],
            "rollout.nc": ["rollout", "--set", "rollout.members=2", "--set", "hybrid.setup='residual'"]}
    for name, (verb, *options) in runs.items():
        assert main([verb, str(case), "--out", str(tmp_path / name), *options, *settings]) == 0
        with xr.open_dataset(tmp_path / name) as ds:
            assert {key: ds.attrs.get(key) for key in given} == given, name
        assert main([verb, str(case), "--out", str(tmp_path / f"plain-{name}"), *options]) == 0
        with xr.open_dataset(tmp_path / f"plain-{name}") as plain, xr.open_dataset(tmp_path / name) as ds:
            assert not set(given) & set(plain.attrs), name
            assert plain.attrs["config_checksum"] == ds.attrs["config_checksum"], name


def test_an_adaptive_float32_simulation_writes_float64_as_a_fixed_step_one_does(tmp_path):
    """docs/netcdf.md: u is float64 in simulations; dopri5 in float32 wrote float32 (rk4 float64)."""
    for integrator in ("rk4", "dopri5"):
        out = tmp_path / f"{integrator}.nc"
        assert main(["simulate", str(write_case(tmp_path)), "--out", str(out), "--set", "compute.dtype=\"float32\"",
                     "--set", f"time.integrator=\"{integrator}\""]) == 0
        with xr.open_dataset(out) as data:
            assert data.u.dtype == np.float64, integrator


def test_nonfinite_initial_conditions_exit_2(tmp_path, capsys):
    bad = tmp_path / "bad.nc"
    xr.Dataset({"u": (("member", "component"), np.array([[1.0, np.nan, 0.0]]))}).to_netcdf(bad)
    text = LORENZ.replace('distribution = "gaussian"', f'distribution = "file"\nfile = "{bad}"')
    out = tmp_path / "out.nc"
    assert main(["simulate", str(write_case(tmp_path, text)), "--out", str(out),
                 "--set", "initial_condition.members=1"]) == 2
    assert not out.exists()
    assert f"initial_condition.file = '{bad}': initial states of members [0] are not finite; give finite states" \
        in capsys.readouterr().err


def test_a_case_path_that_is_not_utf8_is_recorded_in_the_history_escaped(tmp_path):
    """The command line went into `history` as typed, and netCDF4 cannot store its surrogates: the
    simulation ran and then failed with a UnicodeEncodeError traceback (exit 1)."""
    case = os.fsencode(tmp_path) + b"/ca\xffse.toml"
    with open(case, "w") as handle:
        handle.write(write_case(tmp_path).read_text())
    out = tmp_path / "truth.nc"
    result = subprocess.run([sys.executable, "-m", "hybridnde", "simulate", case, "--out", out, "--no-progress"],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    with xr.open_dataset(out) as ds:
        assert "ca\\udcffse.toml' --out" in ds.attrs["history"]
    # a newline in a path stays one line of history (a resumed rollout's lines are one per command)
    lined = tmp_path / "my\ncase.toml"
    lined.write_text(write_case(tmp_path).read_text())
    assert main(["simulate", str(lined), "--out", str(out)]) == 0
    with xr.open_dataset(out) as ds:
        assert len(ds.attrs["history"].splitlines()) == 1 and "my\\ncase.toml" in ds.attrs["history"]


def test_the_time_said_covers_the_spin_up_it_includes(tmp_path, capsys):
    """"simulated 8 members x 20000 steps in 14.57 s" left out the 40000 spin-up steps in that time."""
    out = tmp_path / "truth.nc"
    assert main(["simulate", str(write_case(tmp_path)), "--out", str(out), "--set", "time.spinup_steps=300"]) == 0
    assert "simulated 3 members x 200 steps (after 300 spin-up steps) in " in capsys.readouterr().err


def test_console_script_usage_error_exits_2(tmp_path):
    for module in ("hybridnde.cli", "hybridnde"):  # `python -m hybridnde` where the script is not on the PATH
        result = subprocess.run([sys.executable, "-m", module, "simulate"], capture_output=True, text=True)
        assert result.returncode == 2 and "usage: hybridnde simulate" in result.stderr and "CASE.toml" in result.stderr
        result = subprocess.run([sys.executable, "-m", module, "simulate", str(tmp_path / "missing.toml")],
                                capture_output=True, text=True)  # new: a refusal at run time, not argparse's
        assert result.returncode == 2 and "does not exist" in result.stderr, (module, result.stderr)


def test_a_misspelt_option_gets_the_verbs_usage_and_the_closest_option(capsys):
    """argparse reports unknown arguments of a verb with the top-level usage, which names none of the
    verb's options: here the verb's usage, exit 2, and for a misspelt option the closest one."""
    for argv, verb, hint in ((["simulate", "case.toml", "--quik"], "simulate", "--quik: did you mean --quick?"),
                             (["evaluate", "r.nc", "--reference", "t.nc", "--treshold=0.3"], "evaluate",
                              "--treshold=0.3: did you mean --threshold?"),
                             (["run", "case.toml", "extra"], "run", None),
                             # "did you mean --set?": run takes no --resume, the same command continues
                             (["run", "case.toml", "--resume"], "run", "--resume: `hybridnde run` needs none")):
        with pytest.raises(SystemExit) as exit_info:
            main(argv)
        assert exit_info.value.code == 2
        error = capsys.readouterr().err
        assert error.startswith(f"usage: hybridnde {verb} ") and "unrecognized arguments" in error
        assert (hint in error) if hint else "did you mean" not in error


def test_help_and_usage_errors_do_not_import_torch():
    """`hybridnde --help`, each verb's help and a usage error answer without importing torch (or
    matplotlib), which took ~1.5 s of a 1.7 s `--help`: the verbs import their work when they run."""
    probe = ("import sys\nfrom hybridnde.cli import build_parser\nbuild_parser().format_help()\n"
             "print(sorted(name for name in ('torch', 'matplotlib', 'xarray') if name in sys.modules))")
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_verbs_without_out_write_a_quick_variant_beside_the_full_run_not_over_it(tmp_path, monkeypatch):
    """`simulate --quick` (and train, rollout) without --out write to runs/<case>-quick, as `run --quick`
    does: they wrote runs/<case>/, where a quick `train` replaced a full run's closure.pt."""
    from hybridnde.commands.common import output_directory
    from hybridnde.config import load_case

    case_file = write_case(tmp_path, LORENZ + '[quick]\n"initial_condition.members" = 2\n')
    monkeypatch.chdir(tmp_path)
    assert main(["simulate", str(case_file), "--quick"]) == 0
    assert main(["simulate", str(case_file)]) == 0
    with xr.open_dataset(tmp_path / "runs" / "lorenz_test-quick" / "truth.nc") as quick, \
            xr.open_dataset(tmp_path / "runs" / "lorenz_test" / "truth.nc") as full:
        assert (quick.sizes["member"], full.sizes["member"]) == (2, 3)
    elsewhere = load_case(case_file, overrides=["output.directory='out/l63'"])
    assert output_directory(elsewhere, quick=True).as_posix() == "out/l63-quick"
    assert output_directory(elsewhere, quick=False).as_posix() == "out/l63"
    for folder, quick in ((".", "quick"), ("..", "../quick"), ("/", "/quick")):  # no name to extend
        named = load_case(case_file, overrides=[f"output.directory='{folder}'"])
        assert output_directory(named, quick=True).as_posix() == quick


def test_a_full_disk_is_an_error_message_not_a_traceback(tmp_path, monkeypatch, capsys):
    """The rollout's writer thread wraps the full disk in a RuntimeError (HDF5's own errors say
    "No space left on device"): the command says what to do, without a traceback, and exits 1."""
    import errno

    from hybridnde import rollout_job

    def full(*args, **kwargs):
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError as error:
            raise RuntimeError("writing .r.nc.partial failed") from error

    monkeypatch.setattr(rollout_job, "run_rollout", full)
    assert main(["rollout", str(write_case(tmp_path)), "--out", str(tmp_path / "r.nc")]) == 1
    error = capsys.readouterr().err
    assert "no space left on the device" in error and "--resume continues" in error and "Traceback" not in error
    # run has no --resume: it says the same command goes on
    assert main(["run", str(write_case(tmp_path)), "--out", str(tmp_path / "run")]) == 1
    error = capsys.readouterr().err
    assert "no space left on the device" in error and "the same command continues" in error and "--resume" not in error


def test_a_disk_too_small_for_the_output_is_warned_about_or_refused_before_the_work(tmp_path, monkeypatch, capsys):
    """A full disk was first met when the file was written, after the whole simulation (or rollout).
    Up to 4x the free space (compression might save the rest): a warning; beyond: refused naming the keys."""
    import collections
    import shutil

    from hybridnde import io
    from hybridnde.config import load_case
    from hybridnde.simulate import trajectory_bytes

    case = load_case(write_case(tmp_path))
    sizes = {"simulate": trajectory_bytes(case), "rollout": case.rollout.members * (1 + case.rollout.steps //
                                                                                    case.rollout.save_every) * 3 * 8}
    usage = collections.namedtuple("usage", "total used free")
    for verb, what, keys in (("simulate", "the simulation", "lower initial_condition.members or time.n_steps"),
                             ("rollout", "the rollout", "lower rollout.members or rollout.steps")):
        out, host = tmp_path / f"{verb}.nc", ["--set", "hybrid.setup=\"residual\""] if verb == "rollout" else []
        free = sizes[verb] // 2
        monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10**9, 10**9 - free, free))
        assert main([verb, str(write_case(tmp_path)), "--out", str(out), *host]) == 0  # (tmp is not full)
        assert f"{what} writes up to" in capsys.readouterr().err
        out.unlink()
        free = sizes[verb] // 5
        assert main([verb, str(write_case(tmp_path)), "--out", str(out), *host]) == 2
        error = capsys.readouterr().err
        assert f"{what} writes" in error and "more than 4x the" in error and keys in error and not out.exists()
    # a resume only warns: the file it continues (here: finished) is on the disk already
    free = sizes["rollout"] * 10
    assert main(["rollout", str(write_case(tmp_path)), "--out", str(out), *host]) == 0
    free = sizes["rollout"] // 5
    assert main(["rollout", str(write_case(tmp_path)), "--out", str(out), *host, "--resume"]) == 0
    assert "nothing to resume" in capsys.readouterr().err
    free = 1000
    assert not io.warn_if_disk_short(tmp_path / "t.nc", 999, "x", fix="f")
    assert io.warn_if_disk_short(tmp_path / "t.nc", 4000, "x", fix="f")
    with pytest.raises(io.DataError, match="more than 4x the"):
        io.warn_if_disk_short(tmp_path / "t.nc", 4001, "x", fix="f")


def test_steps_after_the_last_save_are_named(tmp_path, capsys):
    """time.n_steps = 205 with save_every = 10 ended at step 200 without a word."""
    out = tmp_path / "t.nc"
    assert main(["simulate", str(write_case(tmp_path)), "--out", str(out), "--set", "time.n_steps=205"]) == 0
    assert "time.n_steps = 205 is not a multiple of time.save_every = 10: the trajectory ends at step 200 (set " \
           "time.n_steps = 210" in capsys.readouterr().err
    with xr.open_dataset(out) as written:
        assert written.sizes["time"] == 21
    assert main(["simulate", str(write_case(tmp_path)), "--out", str(tmp_path / "u.nc")]) == 0
    assert "not a multiple" not in capsys.readouterr().err


def test_the_command_line_is_recorded_only_while_the_command_runs(tmp_path):
    from hybridnde.io import COMMAND_LINE, history_line

    assert main(["simulate", str(write_case(tmp_path)), "--out", str(tmp_path / "truth.nc")]) == 0
    assert main(["simulate", str(tmp_path / "missing.toml"), "--out", str(tmp_path / "other.nc")]) == 2
    assert COMMAND_LINE.get() is None
    assert history_line("created").endswith(f"created by hybridnde {package_version()}")  # the Python API's


def test_a_full_disk_in_train_says_that_resume_continues(tmp_path, monkeypatch, capsys):
    import errno

    import hybridnde.training

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(hybridnde.training, "train_case", full)
    assert main(["train", str(write_case(tmp_path)), "--data", str(tmp_path / "truth.nc"), "--out",
                 str(tmp_path / "closure.pt")]) == 1
    error = capsys.readouterr().err
    assert "no space left on the device" in error and "--resume continues from it" in error and "Traceback" not in error


INTERRUPTED_WHILE_TORCH_LOADS = """
import importlib.abc, os, signal, sys


class SignalOnImport(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name == "torch":  # as a scheduler's SIGTERM lands in the second torch takes to load
            sys.meta_path.remove(self)
            os.kill(os.getpid(), getattr(signal, sys.argv[1]))
        return None


sys.meta_path.insert(0, SignalOnImport())
from hybridnde.cli import main
assert "torch" not in sys.modules
sys.exit(main(sys.argv[2:]))
"""


@pytest.mark.parametrize("signal_name", ["SIGTERM", "SIGINT"])
def test_an_interrupt_while_torch_loads_is_said_as_any_other(tmp_path, signal_name):
    """It came before the command's handling: a traceback, and now and then a C++ abort (pybind11's
    std::terminate on a KeyboardInterrupt inside torch's start-up), where exit 130 and one line belong."""
    out = tmp_path / "truth.nc"
    result = subprocess.run([sys.executable, "-c", INTERRUPTED_WHILE_TORCH_LOADS, signal_name, "simulate",
                             str(write_case(tmp_path)), "--out", str(out)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 130, result.stderr[-2000:]
    assert "Traceback" not in result.stderr and "hybridnde simulate: interrupted" in result.stderr
    assert not out.exists()
