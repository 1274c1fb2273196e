"""closure.pt integrity (hybridnde.closure_file): what the two checksums cover, what load_closure
refuses and in which words, the atomic write, and the state of the model it returns."""
import datetime

import pytest
import torch

from hybridnde.closure_file import FORMAT, description_checksum, load_closure, save_closure, weights_checksum
from hybridnde.io import DataError
from hybridnde.models import MLPClosure


def _saved(tmp_path, name="closure.pt", **kwargs):
    torch.manual_seed(7)
    model = MLPClosure(state_dim=2, width=4).double()
    model.set_normalization(input_shift=torch.tensor([0.5, -1.0]), input_scale=torch.tensor([2.0, 3.0]),
                            output_shift=torch.tensor([0.25, 0.75]), output_scale=torch.tensor([1.5, 0.5]))
    checksum = save_closure(tmp_path / name, model, **kwargs)
    return model, checksum, torch.load(tmp_path / name, weights_only=True)


def test_the_weights_checksum_covers_names_dtypes_shapes_and_every_byte_in_name_order():
    t = torch.tensor([[0.1, 0.2, 0.3], [0.4, 0.5, 0.6]], dtype=torch.float64)
    reference = weights_checksum({"a": t, "b": t + 1.0})
    assert weights_checksum({"b": t + 1.0, "a": t}) == reference  # insertion order does not count
    assert weights_checksum({"a": t, "c": t + 1.0}) != reference  # a renamed tensor
    assert weights_checksum({"a": t.reshape(3, 2), "b": t + 1.0}) != reference  # same bytes, another shape
    zeros = torch.zeros(4, dtype=torch.float32)
    assert weights_checksum({"a": zeros}) != weights_checksum({"a": zeros.view(torch.int32)})  # same bytes, another dtype
    nudged = t.clone()
    nudged[1, 2] = torch.nextafter(nudged[1, 2], torch.tensor(1.0, dtype=torch.float64))  # the last bit of one weight
    assert weights_checksum({"a": nudged, "b": t + 1.0}) != reference
    assert weights_checksum({"a": torch.tensor(0.5)}) != weights_checksum({"a": torch.tensor(0.25)})  # 0-dim


def test_the_description_checksum_covers_spec_dtype_and_case_but_not_the_spec_key_order():
    payload = {"spec": {"kind": "mlp", "state_dim": 2, "width": 4}, "dtype": "torch.float64", "case_toml": "x = 1\n"}
    reference = description_checksum(payload)
    assert description_checksum(dict(payload, spec={"width": 4, "state_dim": 2, "kind": "mlp"})) == reference
    for edit in ({"spec": {"kind": "mlp", "state_dim": 2, "width": 5}}, {"dtype": "torch.float32"},
                 {"case_toml": "x = 2\n"}):
        assert description_checksum(dict(payload, **edit)) != reference, edit


def test_a_closure_file_with_an_edited_weight_or_buffer_is_refused_as_corrupt(tmp_path):
    """The normalisation buffers are weights too: a changed input scale changes every output."""
    _, checksum, payload = _saved(tmp_path)
    for name in ("net.0.weight", "input_scale"):
        state_dict = dict(payload["state_dict"])
        edited = state_dict[name].clone()
        edited.view(-1)[0] += 1e-3  # a fraction of a unit: every byte-level change counts
        state_dict[name] = edited
        torch.save(dict(payload, state_dict=state_dict), tmp_path / f"{name}.pt")
        with pytest.raises(DataError, match="weights do not match their checksum; the file is corrupt"):
            load_closure(tmp_path / f"{name}.pt")
    assert load_closure(tmp_path / "closure.pt")[1]["checksum"] == checksum


def test_save_closure_replaces_a_file_only_once_it_is_whole(tmp_path, monkeypatch):
    """A write that fails half way (disk full, Ctrl-C) leaves the closure.pt that was there, and no
    partial file beside it."""
    model, checksum, _ = _saved(tmp_path)
    real_save = torch.save

    def failing_save(obj, f, *args, **kwargs):
        real_save({"format": FORMAT}, f)  # something is written first
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(OSError, match="No space left"):
        save_closure(tmp_path / "closure.pt", MLPClosure(state_dim=2, width=4).double())
    monkeypatch.undo()
    assert sorted(path.name for path in tmp_path.iterdir()) == ["closure.pt"]
    assert load_closure(tmp_path / "closure.pt")[1]["checksum"] == checksum


def test_load_closure_names_a_folder(tmp_path):
    (tmp_path / "run").mkdir()
    with pytest.raises(DataError, match="closure file '.*run' is a folder; give the closure.pt in it"):
        load_closure(tmp_path / "run")


def test_load_closure_unpickles_tensors_and_plain_data_only(tmp_path):
    """Loaded with weights_only: a file holding any other object (pickle can run code) is not a closure file."""
    _, _, payload = _saved(tmp_path)
    torch.save(dict(payload, metadata={"when": datetime.date(2024, 1, 1)}), tmp_path / "objects.pt")
    with pytest.raises(DataError, match="objects.pt: not a closure file"):
        load_closure(tmp_path / "objects.pt")


def test_load_closure_names_another_format_and_each_missing_entry(tmp_path):
    _, _, payload = _saved(tmp_path)
    torch.save(dict(payload, format="hybridnde-closure/2"), tmp_path / "newer.pt")
    with pytest.raises(DataError, match=r"not a hybridnde-closure/1 file \(format 'hybridnde-closure/2'\)"):
        load_closure(tmp_path / "newer.pt")
    for key in ("state_dict", "checksum", "dtype", "spec"):
        torch.save({name: value for name, value in payload.items() if name != key}, tmp_path / f"no_{key}.pt")
        with pytest.raises(DataError, match=f"a hybridnde-closure/1 file without {key};"):
            load_closure(tmp_path / f"no_{key}.pt")


def test_a_spec_edited_to_other_sizes_in_an_older_file_is_named_not_a_torch_traceback(tmp_path):
    """A file from before the description checksum whose spec no longer fits its weights (width
    edited): the weights do not load into the rebuilt model; said as a DataError."""
    _, _, payload = _saved(tmp_path)
    older = {key: value for key, value in payload.items() if key != "description_checksum"}
    torch.save(dict(older, spec={**payload["spec"], "width": 5}), tmp_path / "wider.pt")
    with pytest.raises(DataError, match=r"wider.pt: its model description cannot be rebuilt \(RuntimeError"):
        load_closure(tmp_path / "wider.pt")


def test_load_closure_returns_the_model_in_eval_mode_with_its_outputs(tmp_path):
    model, _, _ = _saved(tmp_path, metadata={"epochs": 3})
    model.train()
    save_closure(tmp_path / "training.pt", model)
    rebuilt, payload = load_closure(tmp_path / "training.pt")
    assert not rebuilt.training and not any(module.training for module in rebuilt.modules())
    u = torch.randn(3, 2, dtype=torch.float64)
    torch.testing.assert_close(rebuilt(torch.tensor(0.0), u), model(torch.tensor(0.0), u), rtol=0, atol=0)
    assert payload["format"] == FORMAT and payload["dtype"] == "torch.float64"
