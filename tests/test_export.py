"""TorchScript export (hybridnde.export, ``hybridnde export``): the archive runs with torch alone and
reproduces the Python closure, so C++/Fortran time loops (libtorch, FTorch) can call it."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import warnings

import pytest
import torch
from torch import nn

from hybridnde.cli import main
from hybridnde.export import DtypeChecked
from hybridnde.closure_file import load_closure, save_closure
from hybridnde.io import DataError
from hybridnde.models import MLPClosure, PeriodicCNNClosure

# A process that imports torch and nothing of hybridnde, as a foreign code would: it loads each
# archive, evaluates it on the given states and saves the result.
FOREIGN_CALLER = textwrap.dedent("""
    import sys, warnings
    warnings.simplefilter("ignore", DeprecationWarning)
    import torch
    torch.set_num_threads(int(sys.argv[1]))  # as the test process: threaded GEMMs may round differently
    for archive, inputs, output in zip(*[iter(sys.argv[2:])] * 3):
        closure = torch.jit.load(archive)
        t, u = torch.load(inputs)
        torch.save(closure(t, u), output)
    assert "hybridnde" not in sys.modules and "solvers" not in sys.modules
""")


def trained_like(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Random weights and non-trivial normalisation buffers (they must travel with the archive)."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.normal_(0.0, 0.3)
        shape = model.input_shift.shape
        model.set_normalization(input_shift=torch.randn(shape), input_scale=torch.rand(shape) + 0.5,
                                output_shift=torch.randn(shape), output_scale=torch.rand(shape) + 0.5)
    return model.eval()


def test_exported_closures_reproduce_the_python_closures_without_hybridnde(tmp_path):
    expected, arguments = {}, []
    for kind in ("mlp", "periodic_cnn"):
        for dtype in (torch.float64, torch.float32):
            name = f"{kind}_{str(dtype).replace('torch.', '')}"
            model = MLPClosure(state_dim=4, width=32) if kind == "mlp" else PeriodicCNNClosure(channels=8)
            model = trained_like(model.to(dtype), seed=3)
            save_closure(tmp_path / f"{name}.pt", model)
            assert main(["export", str(tmp_path / f"{name}.pt"), "--out", str(tmp_path / f"{name}.ts")]) == 0
            u = torch.randn((5, 4) if kind == "mlp" else (5, 48), dtype=dtype)  # a grid other than the probe's
            t = torch.tensor(0.7, dtype=dtype)
            torch.save((t, u), tmp_path / f"{name}.input.pt")
            with torch.no_grad():
                expected[name] = model(t, u)
            arguments += [str(tmp_path / f"{name}.ts"), str(tmp_path / f"{name}.input.pt"),
                          str(tmp_path / f"{name}.output.pt")]
    subprocess.run([sys.executable, "-c", FOREIGN_CALLER, str(torch.get_num_threads()), *arguments], check=True,
                   cwd=tmp_path)
    for name, reference in expected.items():
        exported = torch.load(tmp_path / f"{name}.output.pt")
        assert exported.dtype == reference.dtype and exported.shape == reference.shape, name
        torch.testing.assert_close(exported, reference, rtol=0, atol=0, msg=name)


def test_export_records_metadata_and_can_change_precision(tmp_path):
    model = trained_like(MLPClosure(state_dim=3, width=16).double(), seed=1)
    checksum = save_closure(tmp_path / "closure.pt", model, case_toml="[system]\nname = \"lorenz63\"\n")
    assert main(["export", str(tmp_path / "closure.pt"), "--dtype", "float32"]) == 0  # default --out: closure.ts
    extra = {"hybridnde.json": ""}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torch >= 2.10 deprecates torch.jit
        scripted = torch.jit.load(str(tmp_path / "closure.ts"), _extra_files=extra)
    metadata = json.loads(extra["hybridnde.json"])
    assert metadata["weights_checksum"] == checksum and metadata["dtype"] == "float32"
    assert metadata["spec"]["kind"] == "mlp" and "lorenz63" in metadata["case_toml"]
    assert metadata["state_shape"] == [3]
    assert {tensor.device.type for tensor in scripted.state_dict().values()} == {"cpu"}  # the dtype check's buffer too
    checked = DtypeChecked(nn.Linear(2, 2).to("meta"), torch.float32, torch.device("meta"))  # as for cuda weights
    assert {tensor.device.type for tensor in checked.state_dict().values()} == {"meta"}
    u = torch.randn(7, 3, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(scripted(torch.tensor(0.0), u.float()), model(torch.tensor(0.0), u).float(),
                                   rtol=1e-5, atol=1e-6)
        # another precision than the weights': said in hybridnde's words (it was torch's "Input type (double)
        # and bias type (float)", or for float32 input to float64 weights a silent float64 answer)
        # (TorchScript's traceback quotes the check's source: its last line is the error raised)
        with pytest.raises(Exception) as raised:
            scripted(torch.tensor(0.0), u)
        assert "u has another dtype than the closure's weights" in str(raised.value).strip().splitlines()[-1]


def test_a_periodic_cnns_export_names_and_probes_its_trained_grid(tmp_path):
    """The metadata said probe_shape [2, 32] for a CNN trained on 64 points (the check ran on 32)."""
    case = "[case]\nname = 'k'\n[system]\nname = 'kuramoto_sivashinsky'\nn_points = 64\n[time]\ndt = 0.25\n"
    save_closure(tmp_path / "closure.pt", PeriodicCNNClosure(channels=4).double(), case_toml=case)
    assert main(["export", str(tmp_path / "closure.pt")]) == 0
    extra = {"hybridnde.json": ""}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.load(str(tmp_path / "closure.ts"), _extra_files=extra)
    metadata = json.loads(extra["hybridnde.json"])
    assert metadata["state_shape"] == [64] and metadata["probe_shape"] == [2, 64]
    save_closure(tmp_path / "bare.pt", PeriodicCNNClosure(channels=4).double())  # no case: not known
    assert main(["export", str(tmp_path / "bare.pt"), "--out", str(tmp_path / "bare.ts")]) == 0
    extra = {"hybridnde.json": ""}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.load(str(tmp_path / "bare.ts"), _extra_files=extra)
    assert json.loads(extra["hybridnde.json"])["state_shape"] is None


def test_a_second_order_closure_exports_what_its_host_adds(tmp_path):
    """Its host keeps only the accelerations of the network's output (``P C``); the bare network's
    position block is untrained, and a time loop adding the archive's output to (v, 0) as the docs say
    would have added it to dq/dt."""
    from solvers import SecondOrderHost

    model = trained_like(MLPClosure(state_dim=4, width=16).double(), seed=2)
    case = '[system]\nname = "double_pendulum"\n[initial_condition]\ndistribution = "point"\nvalue = [1, 1, 0, 0]\n' \
           '[hybrid]\nsetup = "second_order"\n'
    save_closure(tmp_path / "closure.pt", model, case_toml=case)
    assert main(["export", str(tmp_path / "closure.pt")]) == 0
    extra = {"hybridnde.json": ""}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        scripted = torch.jit.load(str(tmp_path / "closure.ts"), _extra_files=extra)
    metadata = json.loads(extra["hybridnde.json"])
    assert metadata["hybrid_setup"] == "second_order" and "accelerations" in metadata["output"]
    host = SecondOrderHost(state_shape=(4,), dt=0.01, closure=model)
    u, t = torch.randn(6, 4, dtype=torch.float64), torch.tensor(0.3, dtype=torch.float64)
    with torch.no_grad():
        exported, network = scripted(t, u), model(t, u)
        assert network[:, :2].abs().min() > 0  # the block the host drops
        assert torch.equal(exported, host.closure_contribution(network)) and not exported[:, :2].any()
        # the archive added to the host's own tendency is the host's right-hand side, bit for bit
        assert torch.equal(host.known_rhs(t, u) + exported, host.rhs(t, u))


def test_bad_inputs_exit_2(tmp_path, capsys):
    assert main(["export", str(tmp_path / "missing.pt"), "--out", str(tmp_path / "c.ts")]) == 2
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "junk.pt").write_bytes(b"not a closure")
    assert main(["export", str(tmp_path / "junk.pt"), "--out", str(tmp_path / "c.ts")]) == 2
    save_closure(tmp_path / "closure.pt", MLPClosure(state_dim=2, width=4).double())
    assert main(["export", str(tmp_path / "closure.pt"), "--out", str(tmp_path / "closure.pt")]) == 2
    capsys.readouterr()
    assert main(["export", str(tmp_path / "junk.pt"), "--out", str(tmp_path / "c.ts")]) == 2
    assert "not a closure file" in capsys.readouterr().err  # not torch's advice to unpickle it anyway
    assert main(["export", str(tmp_path / "closure.pt"), "--out", str(tmp_path / "c.ts"), "--device", "gpu"]) == 2
    assert "--device = 'gpu' is not a device" in capsys.readouterr().err
    assert main(["export", str(tmp_path / "closure.pt"), "--out", str(tmp_path / "junk.pt" / "c.ts")]) == 2
    assert "is a file, not a folder" in capsys.readouterr().err
    (tmp_path / "truth.nc").write_bytes(b"data")  # a typo in --out replaced it with an archive
    assert main(["export", str(tmp_path / "closure.pt"), "--out", str(tmp_path / "truth.nc")]) == 2
    assert "give a TorchScript file name ending in .ts" in capsys.readouterr().err
    assert (tmp_path / "truth.nc").read_bytes() == b"data"
    assert main(["export", str(tmp_path / "closure.pt"), "--out", str(tmp_path / "upper.TS")]) == 0  # any case
    assert main(["export", str(tmp_path / "closure.pt"), "--out", str(tmp_path / "meta.ts"), "--device", "meta"]) == 2
    assert "--device = 'meta' is not a device" in capsys.readouterr().err
    assert not (tmp_path / "c.ts").exists()
    # an exported file handed back where a closure.pt belongs: named for what it is, no torch warning
    assert main(["export", str(tmp_path / "closure.pt"), "--out", str(tmp_path / "exported.pt")]) == 0
    capsys.readouterr()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert main(["export", str(tmp_path / "exported.pt"), "--out", str(tmp_path / "again.ts")]) == 2
    assert "an exported TorchScript closure" in capsys.readouterr().err


def test_an_unreadable_closure_file_says_so(tmp_path, monkeypatch):
    """Not "not a closure file; give one written by hybridnde train" (root reads through chmod 000, so the
    denial is simulated where torch opens the file)."""
    from hybridnde.closure_file import load_closure
    from hybridnde.io import DataError

    save_closure(tmp_path / "closure.pt", MLPClosure(state_dim=2, width=4).double())

    def denied(path, *args, **kwargs):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(torch, "load", denied)
    with pytest.raises(DataError, match=r"closure.pt: cannot be read \(Permission denied\); check its permissions"):
        load_closure(tmp_path / "closure.pt")


def test_a_zip_the_torchscript_sniffer_cannot_read_is_left_to_torch_load(tmp_path, monkeypatch, capsys):
    """Damaged zips make ``zipfile`` raise more than BadZipFile (UnicodeDecodeError, NotImplementedError):
    the sniffing must not turn that into a traceback; torch.load judges the file as before."""
    import zipfile

    save_closure(tmp_path / "closure.pt", MLPClosure(state_dim=2, width=4).double())

    def unreadable(*args, **kwargs):
        raise NotImplementedError("zip file version 9.9")

    monkeypatch.setattr(zipfile, "ZipFile", unreadable)
    assert main(["export", str(tmp_path / "closure.pt"), "--out", str(tmp_path / "c.ts")]) == 0
    (tmp_path / "junk.pt").write_bytes(b"PK\x03\x04 not really a zip")
    assert main(["export", str(tmp_path / "junk.pt"), "--out", str(tmp_path / "d.ts")]) == 2
    assert "not a closure file" in capsys.readouterr().err


def test_a_truncated_or_hand_edited_closure_file_is_named_damaged_not_locked(tmp_path, capsys):
    """A truncated file was "cannot be read (Invalid argument); check its permissions"; a valid file with
    a broken model description (edited, or from another version) was a KeyError/ValueError traceback."""
    save_closure(tmp_path / "closure.pt", MLPClosure(state_dim=2, width=4).double())
    whole = (tmp_path / "closure.pt").read_bytes()
    (tmp_path / "truncated.pt").write_bytes(whole[:len(whole) // 2])
    assert main(["export", str(tmp_path / "truncated.pt"), "--out", str(tmp_path / "c.ts")]) == 2
    error = capsys.readouterr().err
    assert "permissions" not in error and ("damaged or truncated" in error or "not a closure file" in error)
    payload = torch.load(tmp_path / "closure.pt", weights_only=True)
    older = {key: value for key, value in payload.items() if key != "description_checksum"}  # before it existed
    for name, spec in (("bogus", {**payload["spec"], "kind": "bogus"}), ("depth", {**payload["spec"], "depth": "x"}),
                       ("nospec", None)):
        edited = dict(older, spec=spec) if spec is not None else {k: v for k, v in older.items() if k != "spec"}
        torch.save(edited, tmp_path / f"{name}.pt")
        assert main(["export", str(tmp_path / f"{name}.pt"), "--out", str(tmp_path / "c.ts")]) == 2
        error = capsys.readouterr().err
        assert f"{name}.pt" in error and ("cannot be rebuilt" in error or "without spec" in error), error
    assert not (tmp_path / "c.ts").exists()


def test_an_edited_description_or_dtype_is_refused_even_where_it_would_rebuild(tmp_path):
    """Only the weights were checksummed: an activation edited tanh -> relu loaded and gave outputs 9.7
    off, another case_toml was trusted by the case check, and a dtype that disagrees with the weights
    surfaced as torch's matmul error at the first call."""
    save_closure(tmp_path / "closure.pt", MLPClosure(state_dim=2, width=4).double(), case_toml="[case]\nname = 'a'\n")
    payload = torch.load(tmp_path / "closure.pt", weights_only=True)
    assert load_closure(tmp_path / "closure.pt")[1]["description_checksum"] == payload["description_checksum"]
    for name, edit in (("activation", {"spec": {**payload["spec"], "activation": "relu"}}),
                       ("case", {"case_toml": "[case]\nname = 'b'\n"})):
        torch.save(dict(payload, **edit), tmp_path / f"{name}.pt")
        with pytest.raises(DataError, match="description .* does not match its checksum"):
            load_closure(tmp_path / f"{name}.pt")
    older = {key: value for key, value in payload.items() if key != "description_checksum"}
    torch.save(dict(older, dtype="torch.float32"), tmp_path / "dtype.pt")
    with pytest.raises(DataError, match="says dtype torch.float32 but holds torch.float64 weights"):
        load_closure(tmp_path / "dtype.pt")
    torch.save(older, tmp_path / "older.pt")  # a file from before the description checksum still loads
    assert load_closure(tmp_path / "older.pt")[1]["checksum"] == payload["checksum"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_a_closure_asked_onto_a_missing_gpu_says_so(tmp_path):
    """It was torch's bare AssertionError "Torch not compiled with CUDA enabled"."""
    save_closure(tmp_path / "closure.pt", MLPClosure(state_dim=2, width=4).double())
    with pytest.raises(DataError, match="cannot be placed on device 'cuda'.*choose a device this machine has"):
        load_closure(tmp_path / "closure.pt", device="cuda")


def test_export_puts_the_dtype_check_on_the_weights_device(tmp_path, monkeypatch):
    """An archive exported for cuda held one CPU tensor (the dtype check's buffer): export hands the
    weights' device to it (seen through a spy here: this machine has one device)."""
    from hybridnde import export

    devices = []

    class Spy(DtypeChecked):
        def __init__(self, closure, dtype, device="unset"):
            devices.append(device)
            super().__init__(closure, dtype, "cpu" if device == "unset" else device)

    monkeypatch.setattr(export, "DtypeChecked", Spy)
    save_closure(tmp_path / "closure.pt", trained_like(MLPClosure(state_dim=3, width=8).double(), seed=2))
    assert main(["export", str(tmp_path / "closure.pt")]) == 0
    assert devices == [torch.device("cpu")]
