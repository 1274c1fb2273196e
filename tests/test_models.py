"""Closures: shapes and dtypes, translation equivariance of the periodic CNN, normalisation saved
with the weights, rebuilding from a closure file, TorchScript."""
import copy
import warnings

import pytest
import torch

from hybridnde.closure_file import load_closure, save_closure
from hybridnde.config import ModelConfig
from hybridnde.models import MLPClosure, PeriodicCNNClosure, build_model, model_from_spec


def test_mlp_maps_states_to_tendencies(dtype):
    model = MLPClosure(state_dim=3, width=10, depth=3).to(dtype)
    u = torch.randn(7, 3, dtype=dtype)
    out = model(torch.zeros((), dtype=dtype), u)
    assert out.shape == (7, 3) and out.dtype == dtype
    assert sum(isinstance(layer, torch.nn.Linear) for layer in model.net) == 4


def test_periodic_cnn_is_translation_equivariant(dtype):
    torch.manual_seed(0)
    model = PeriodicCNNClosure(channels=6, depth=3, kernel_size=5, activation="gelu").to(dtype)
    model.set_normalization(input_shift=torch.tensor(0.3), input_scale=torch.tensor(2.0),
                            output_shift=torch.tensor(0.1), output_scale=torch.tensor(0.5))
    u = torch.randn(4, 32, dtype=dtype)
    t = torch.zeros((), dtype=dtype)
    tolerance = 1e-12 if dtype == torch.float64 else 1e-5
    for shift in (1, 5, 31):
        torch.testing.assert_close(model(t, torch.roll(u, shift, -1)), torch.roll(model(t, u), shift, -1),
                                   rtol=tolerance, atol=tolerance)
    with pytest.raises(ValueError, match="odd"):
        PeriodicCNNClosure(kernel_size=4)


def _circularly_padded_reference(model: PeriodicCNNClosure, u: torch.Tensor) -> torch.Tensor:
    """The closure as torch's circularly padded Conv1d layers compute it, with the model's weights: on
    the field tiled 5 times (itself periodic), so any receptive field fits, then the middle period."""
    n, pad = u.shape[-1], model.spec["kernel_size"] // 2
    x = ((u - model.input_shift) / model.input_scale).repeat(1, 5).unsqueeze(-2)
    for layer in model.net:
        if isinstance(layer, torch.nn.Conv1d):
            x = torch.nn.functional.conv1d(torch.nn.functional.pad(x, (pad, pad), mode="circular"),
                                           layer.weight, layer.bias)
        else:
            x = layer(x)
    return x.squeeze(-2)[..., 2 * n:3 * n] * model.output_scale + model.output_shift


@pytest.mark.parametrize("n", [32, 9, 4])  # a halo of 6 = 2/3 of the grid, and wider than the grid
def test_periodic_cnn_equals_circularly_padded_convolutions_and_their_gradients(n):
    torch.manual_seed(3)
    model = PeriodicCNNClosure(channels=5, depth=2, kernel_size=5).double()
    model.set_normalization(input_shift=torch.tensor(0.3), input_scale=torch.tensor(2.0),
                            output_shift=torch.tensor(-0.1), output_scale=torch.tensor(0.7))
    assert model.halo == 6
    u = torch.randn(3, n, dtype=torch.float64)
    out, reference = model(torch.tensor(0.0), u), _circularly_padded_reference(model, u)
    assert out.shape == u.shape
    torch.testing.assert_close(out, reference, rtol=1e-13, atol=1e-14)
    weights = list(model.parameters())
    grads = torch.autograd.grad(out.square().sum(), weights)
    reference_grads = torch.autograd.grad(_circularly_padded_reference(model, u).square().sum(), weights)
    for grad, reference_grad in zip(grads, reference_grads):
        torch.testing.assert_close(grad, reference_grad, rtol=1e-12, atol=1e-13)


def test_periodic_cnn_runs_float64_cpu_members_in_blocks_with_the_whole_batchs_values_and_gradients():
    torch.manual_seed(4)
    model = PeriodicCNNClosure(channels=6, depth=2, kernel_size=5).double()
    model.set_normalization(input_shift=torch.tensor(0.3), input_scale=torch.tensor(2.0),
                            output_shift=torch.tensor(-0.1), output_scale=torch.tensor(0.7))
    model.unfold_block_bytes = 64 * 1024  # a member unfolds to 30 rows x 52 points x 8 bytes: 5 a block
    u, t = torch.randn(23, 40, dtype=torch.float64), torch.tensor(0.0)
    seen = []
    counting = model.net.register_forward_pre_hook(lambda net, inputs: seen.append(inputs[0].shape[0]))
    out = model(t, u)
    assert seen == [5, 5, 5, 5, 3]
    assert model.members_at_once(u.float()) == 23 and model.members_at_once(u[0]) == 40  # oneDNN's; unbatched
    whole = copy.deepcopy(model)
    whole.unfold_block_bytes = 2**62
    reference = whole(t, u)
    assert seen[-1] == 23
    counting.remove()
    torch.testing.assert_close(out, reference, rtol=1e-14, atol=1e-15)
    torch.testing.assert_close(out, _circularly_padded_reference(model, u), rtol=1e-13, atol=1e-14)
    grads = torch.autograd.grad(out.square().sum(), list(model.parameters()))
    reference_grads = torch.autograd.grad(reference.square().sum(), list(whole.parameters()))
    for grad, reference_grad in zip(grads, reference_grads):
        torch.testing.assert_close(grad, reference_grad, rtol=1e-12, atol=1e-13)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        scripted = torch.jit.script(model)
    torch.testing.assert_close(scripted(t, u), out, rtol=0, atol=0)
    empty = torch.zeros(0, 40, dtype=torch.float64)  # an MPI rank may get no members
    assert model(t, empty).shape == (0, 40) and scripted(t, empty).shape == (0, 40)


def test_normalisation_is_applied_and_saved_with_the_weights(tmp_path):
    torch.manual_seed(1)
    model = MLPClosure(state_dim=2, width=8).double()
    u = torch.randn(5, 2, dtype=torch.float64)
    t = torch.zeros((), dtype=torch.float64)
    raw = model.net((u - torch.tensor([1.0, -2.0])) / torch.tensor([0.5, 3.0]))
    model.set_normalization(input_shift=torch.tensor([1.0, -2.0]), input_scale=torch.tensor([0.5, 3.0]),
                            output_shift=torch.tensor([0.25, 0.0]), output_scale=torch.tensor([2.0, 0.0]))
    assert float(model.output_scale[1]) == pytest.approx(1e-8)  # scales are floored away from zero
    expected = raw * torch.tensor([2.0, 1e-8], dtype=torch.float64) + torch.tensor([0.25, 0.0], dtype=torch.float64)
    torch.testing.assert_close(model(t, u), expected)
    checksum = save_closure(tmp_path / "closure.pt", model, metadata={"note": "test"})
    rebuilt, payload = load_closure(tmp_path / "closure.pt")
    assert payload["checksum"] == checksum and payload["metadata"] == {"note": "test"}
    torch.testing.assert_close(rebuilt(t, u), model(t, u), rtol=0, atol=0)
    as_float32, _ = load_closure(tmp_path / "closure.pt", dtype=torch.float32)
    assert as_float32.input_scale.dtype == torch.float32


def test_build_model_follows_the_config():
    mlp = build_model(ModelConfig(kind="mlp", width=7, depth=1), state_shape=(4,))
    assert isinstance(mlp, MLPClosure) and mlp.spec["state_dim"] == 4 and mlp.net[0].out_features == 7
    cnn = build_model(ModelConfig(kind="periodic_cnn", width=5, depth=2, kernel_size=3), state_shape=(16,),
                      dtype=torch.float32)
    assert isinstance(cnn, PeriodicCNNClosure) and next(cnn.parameters()).dtype == torch.float32
    assert isinstance(model_from_spec(cnn.spec), PeriodicCNNClosure)
    with pytest.raises(ValueError, match="activation"):
        MLPClosure(state_dim=2, activation="sine")


def test_closures_script_to_the_same_function():
    torch.manual_seed(2)
    for model, shape in ((MLPClosure(state_dim=3, width=6).double(), (4, 3)),
                         (PeriodicCNNClosure(channels=4).double(), (4, 16))):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # torch 2.13 deprecates jit.script itself
            scripted = torch.jit.script(model)
        u = torch.randn(shape, dtype=torch.float64)
        t = torch.zeros((), dtype=torch.float64)
        torch.testing.assert_close(scripted(t, u), model(t, u), rtol=0, atol=0)


def test_save_closure_names_what_it_can_save(tmp_path):
    """A module without the package's ``spec`` cannot be rebuilt from the file: refused, naming the way."""
    with pytest.raises(TypeError, match="not a Linear; save it with torch.save"):
        save_closure(tmp_path / "linear.pt", torch.nn.Linear(2, 2))
    assert not (tmp_path / "linear.pt").exists()


def test_models_name_a_wrong_size_instead_of_failing_deep_in_torch():
    with pytest.raises(ValueError, match=r"MLPClosure\(state_dim=3\) got u of shape \(4, 2\): build it with state_dim=2"):
        MLPClosure(state_dim=3, width=4).double()(torch.tensor(0.0), torch.zeros(4, 2, dtype=torch.float64))
    for arguments, name in (({"state_dim": 2, "width": 0}, "width"), ({"state_dim": -1}, "state_dim"),
                            ({"state_dim": 2, "depth": -1}, "depth")):
        with pytest.raises(ValueError, match=name):
            MLPClosure(**arguments)
    with pytest.raises(ValueError, match="channels"):
        PeriodicCNNClosure(channels=0)
    assert len(MLPClosure(state_dim=2, depth=0).net) == 1  # depth 0: one linear map, allowed


def test_numpy_integer_sizes_build_a_model_whose_file_loads(tmp_path):
    """numpy's integers are sizes (a config read through numpy, say); the spec stores Python ints, so
    the closure file loads with weights_only=True."""
    import numpy as np

    model = MLPClosure(state_dim=np.int64(3), width=np.int32(4), depth=np.int64(1)).double()
    assert all(type(value) is int for key, value in model.spec.items() if key != "kind" and key != "activation")
    save_closure(tmp_path / "closure.pt", model)
    rebuilt, _ = load_closure(tmp_path / "closure.pt")
    assert rebuilt.spec == model.spec
