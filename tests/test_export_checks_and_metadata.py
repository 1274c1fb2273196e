"""TorchScript export (hybridnde.export) beyond test_export.py: the archive's own dtype check (not
torch's error, which quotes the check's source in its traceback), the script-vs-Python probe that
must refuse a differing archive, the atomic write, and the metadata for cases that say little."""
import copy
import json
import warnings

import pytest
import torch

from hybridnde.closure_file import save_closure
from hybridnde.export import export_closure, probe_shape
from hybridnde.io import DataError
from hybridnde.models import MLPClosure, PeriodicCNNClosure


def _load(path):
    extra = {"hybridnde.json": ""}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        scripted = torch.jit.load(str(path), _extra_files=extra)
    return scripted, json.loads(extra["hybridnde.json"])


def _script(module):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return torch.jit.script(module)


def test_the_archive_refuses_another_precision_in_its_own_words(tmp_path):
    """The message is the archive's raise, not torch's matmul error: TorchScript tracebacks quote the
    source around the failing call, the check's text included, so the last line is what counts. Float32
    input to float64 weights would otherwise be answered silently in float64."""
    save_closure(tmp_path / "closure.pt", MLPClosure(state_dim=3, width=4).double())
    for dtype, wrong in ((torch.float64, torch.float32), (torch.float32, torch.float64)):
        out = tmp_path / f"{str(dtype)[6:]}.ts"
        export_closure(tmp_path / "closure.pt", out, dtype=dtype)
        scripted, _ = _load(out)
        assert scripted(torch.tensor(0.0), torch.zeros(2, 3, dtype=dtype)).dtype == dtype
        with pytest.raises(Exception) as raised:
            scripted(torch.tensor(0.0), torch.zeros(2, 3, dtype=wrong))
        assert "hybridnde closure: u has another dtype than the closure's weights" in \
            str(raised.value).strip().splitlines()[-1], str(raised.value)


def test_an_archive_that_differs_from_the_python_closure_is_refused_and_not_written(tmp_path, monkeypatch):
    """The probe compares bit for bit on random states: a scripted module with one input weight 1e-12
    off (invisible on a zero state with zero input shift) is refused."""
    save_closure(tmp_path / "closure.pt", MLPClosure(state_dim=3, width=4).double())
    real_script = torch.jit.script

    def off_by_a_bit(module):
        scripted = real_script(copy.deepcopy(module))  # a scripted module shares the original's tensors
        with torch.no_grad():
            scripted.closure.net[0].weight[0, 0] *= 1.0 + 1e-12
        return scripted

    monkeypatch.setattr(torch.jit, "script", off_by_a_bit)
    with pytest.raises(RuntimeError, match="the TorchScript closure does not reproduce the Python one"):
        export_closure(tmp_path / "closure.pt", tmp_path / "closure.ts")
    assert not (tmp_path / "closure.ts").exists()


def test_a_closure_torchscript_cannot_compile_is_a_data_error(tmp_path, monkeypatch):
    save_closure(tmp_path / "closure.pt", MLPClosure(state_dim=3, width=4).double())

    def cannot(module):
        raise torch.jit.frontend.NotSupportedError(None, "Compiled functions can't take variable number of arguments")

    monkeypatch.setattr(torch.jit, "script", cannot)
    with pytest.raises(DataError, match="closure.pt: the closure cannot be compiled to TorchScript"):
        export_closure(tmp_path / "closure.pt", tmp_path / "closure.ts")


def test_export_replaces_an_archive_only_once_it_is_whole(tmp_path, monkeypatch):
    save_closure(tmp_path / "closure.pt", MLPClosure(state_dim=3, width=4).double())
    export_closure(tmp_path / "closure.pt", tmp_path / "closure.ts")
    before = (tmp_path / "closure.ts").read_bytes()

    def failing_save(module, f, *args, **kwargs):
        with open(f, "wb") as handle:
            handle.write(b"PK partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch.jit, "save", failing_save)
    with pytest.raises(OSError, match="No space left"):
        export_closure(tmp_path / "closure.pt", tmp_path / "closure.ts")
    assert (tmp_path / "closure.ts").read_bytes() == before
    assert sorted(path.name for path in tmp_path.iterdir()) == ["closure.pt", "closure.ts"]


def test_probe_shapes():
    assert probe_shape({"kind": "mlp", "state_dim": 6}) == (2, 6)
    assert probe_shape({"kind": "periodic_cnn", "channels": 4}) == (2, 32)
    assert probe_shape({"kind": "periodic_cnn"}, n_points=48) == (2, 48)


def test_the_setup_and_grid_of_cases_that_say_little_or_no_longer_validate(tmp_path):
    """No case: setup "" and no grid, probed on 32 points; a case without [hybrid]: "residual"; a
    periodic CNN's case that fails today's validation still exports, its grid unknown (the setup is
    read from the TOML itself)."""
    cnn = PeriodicCNNClosure(channels=2, depth=1, kernel_size=3).double()
    cases = {"bare": ("", "", None, [2, 32]),
             "lorenz": ('[system]\nname = "lorenz63"\n', "residual", None, [2, 32]),
             "invalid": ('[system]\nname = "kuramoto_sivashinsky"\nn_points = 4\n[hybrid]\nsetup = "residual"\n',
                         "residual", None, [2, 32])}
    for name, (case, setup, state_shape, probe) in cases.items():
        save_closure(tmp_path / f"{name}.pt", cnn, case_toml=case)
        metadata = export_closure(tmp_path / f"{name}.pt", tmp_path / f"{name}.ts")
        assert (metadata["hybrid_setup"], metadata["state_shape"], metadata["probe_shape"]) == (setup, state_shape, probe), name
        assert _load(tmp_path / f"{name}.ts")[1] == metadata
        assert "add it to the host's tendency" in metadata["output"]


def test_a_stored_case_that_is_not_toml_is_named(tmp_path):
    save_closure(tmp_path / "closure.pt", MLPClosure(state_dim=3, width=4).double(), case_toml="[hybrid\nsetup = 1")
    with pytest.raises(DataError, match="closure.pt: its stored case is not readable TOML"):
        export_closure(tmp_path / "closure.pt", tmp_path / "closure.ts")
    assert not (tmp_path / "closure.ts").exists()
