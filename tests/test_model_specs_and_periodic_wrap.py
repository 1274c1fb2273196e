"""Closures (hybridnde.models) beyond test_models.py: the periodic wrap for every halo width, shapes
kept for a batch of one and an unbatched field, specs and configs that rebuild the architecture they
name, sizes and statistics refused or detached as documented."""
import pytest
import torch
from torch import nn

from hybridnde.config import ModelConfig
from hybridnde.models import (ACTIVATIONS, MLPClosure, PeriodicCNNClosure, build_model, model_from_spec,
                              periodic_halo)


@pytest.mark.parametrize("n", [1, 2, 3, 5, 8])
def test_periodic_halo_is_the_field_at_indices_modulo_n_for_every_width(n):
    """Halos narrower than, equal to, one wider than and several times the grid all read the field
    periodically (the concatenation and the index paths meet at width == n)."""
    z = torch.arange(2 * n, dtype=torch.float64).reshape(2, n) + 0.5
    for width in range(0, 3 * n + 2):
        expected = z[..., torch.remainder(torch.arange(-width, n + width), n)]
        assert torch.equal(periodic_halo(z, width), expected), (n, width)


def test_a_periodic_cnn_keeps_the_batch_axis_of_one_member_and_takes_an_unbatched_field():
    torch.manual_seed(5)
    model = PeriodicCNNClosure(channels=3, depth=1, kernel_size=3).double()
    u, t = torch.randn(4, 12, dtype=torch.float64), torch.tensor(0.0)
    whole = model(t, u)
    one = model(t, u[:1])
    assert one.shape == (1, 12)
    torch.testing.assert_close(one, whole[:1], rtol=1e-14, atol=1e-15)
    unbatched = model(t, u[0])  # conv1d takes an unbatched (channels, n) input; members_at_once passes it whole
    assert unbatched.shape == (12,)
    torch.testing.assert_close(unbatched, whole[0], rtol=1e-14, atol=1e-15)


@pytest.mark.parametrize("spec", [
    {"kind": "periodic_cnn", "channels": 3, "depth": 1, "kernel_size": 3, "activation": "relu"},
    {"kind": "periodic_cnn", "channels": 2, "depth": 3, "kernel_size": 7, "activation": "silu"},
    {"kind": "mlp", "state_dim": 5, "width": 6, "depth": 3, "activation": "elu"},
])
def test_a_closures_spec_rebuilds_its_architecture_and_function(spec):
    """``spec`` is all that closure files keep of the architecture: what it rebuilds takes the
    original's state_dict (same shapes) and computes the same function with it."""
    torch.manual_seed(6)
    model = model_from_spec(spec).double()
    assert model.spec == spec
    rebuilt = model_from_spec(model.spec).double()
    shapes = {name: tensor.shape for name, tensor in model.state_dict().items()}
    assert {name: tensor.shape for name, tensor in rebuilt.state_dict().items()} == shapes
    rebuilt.load_state_dict(model.state_dict())
    u = torch.randn(3, spec.get("state_dim", 16), dtype=torch.float64)
    torch.testing.assert_close(rebuilt(torch.tensor(0.0), u), model(torch.tensor(0.0), u), rtol=0, atol=0)
    if spec["kind"] == "periodic_cnn":
        assert [layer.kernel_size for layer in model.net if isinstance(layer, nn.Conv1d)] == \
            [(spec["kernel_size"],)] * (spec["depth"] + 1)


def test_model_from_spec_names_an_unknown_kind_and_leaves_the_spec_alone():
    spec = {"kind": "transformer", "width": 3}
    with pytest.raises(ValueError, match=r"unknown closure kind 'transformer'; known: \['mlp', 'periodic_cnn'\]"):
        model_from_spec(spec)
    cnn = {"kind": "periodic_cnn", "channels": 2}
    model_from_spec(cnn)
    assert cnn == {"kind": "periodic_cnn", "channels": 2}


def test_build_model_takes_every_architecture_field_of_the_config():
    mlp = build_model(ModelConfig(kind="mlp", width=7, depth=3, activation="relu"), state_shape=(4,))
    assert mlp.spec == {"kind": "mlp", "state_dim": 4, "width": 7, "depth": 3, "activation": "relu"}
    assert [type(layer) for layer in mlp.net] == [nn.Linear, nn.ReLU] * 3 + [nn.Linear]
    cnn = build_model(ModelConfig(kind="periodic_cnn", width=5, depth=1, kernel_size=3, activation="gelu"),
                      state_shape=(16,))
    assert cnn.spec == {"kind": "periodic_cnn", "channels": 5, "depth": 1, "kernel_size": 3, "activation": "gelu"}
    assert [layer.kernel_size for layer in cnn.net if isinstance(layer, nn.Conv1d)] == [(3,), (3,)]
    assert isinstance(cnn.net[1], nn.GELU) and cnn.halo == 2
    assert next(cnn.parameters()).dtype == torch.float64  # the default dtype


@pytest.mark.parametrize("name", sorted(ACTIVATIONS))
def test_each_activation_name_builds_that_activation(name):
    """The name in a case (and in the spec a file keeps) is the nonlinearity the layers apply."""
    for model in (MLPClosure(state_dim=2, width=3, depth=1, activation=name),
                  PeriodicCNNClosure(channels=2, depth=1, kernel_size=3, activation=name)):
        activation = model.net[1]
        assert type(activation).__name__.lower() == name
        x = torch.linspace(-2.0, 2.0, 9)
        reference = torch.tanh(x) if name == "tanh" else getattr(torch.nn.functional, name)(x)
        torch.testing.assert_close(activation(x), reference, rtol=0, atol=0)


def test_sizes_refuse_booleans():
    """``True`` is an int to Python (and to operator.index); a flag passed as a size is a mistake."""
    for arguments, name in (({"state_dim": True}, "state_dim"), ({"state_dim": 2, "depth": False}, "depth"),
                            ({"state_dim": 2, "width": True}, "width")):
        with pytest.raises(ValueError, match=f"{name}=(True|False) must be an integer"):
            MLPClosure(**arguments)
    with pytest.raises(ValueError, match="kernel_size=True must be an integer"):
        PeriodicCNNClosure(kernel_size=True)


def test_set_normalization_stores_values_not_graph():
    """Statistics computed from tensors that require grad (say, a model's output) are copied as data:
    the buffers stay leaves without gradients, and training through the closure does not backpropagate
    into the statistics' graph."""
    model = MLPClosure(state_dim=2, width=3).double()
    source = torch.tensor([2.0, 3.0], dtype=torch.float64, requires_grad=True)
    model.set_normalization(input_shift=source * 0.5, input_scale=source, output_shift=source.sum(),
                            output_scale=source + 1.0)
    for name in ("input_shift", "input_scale", "output_shift", "output_scale"):
        buffer = getattr(model, name)
        assert not buffer.requires_grad and buffer.grad_fn is None, name
    torch.testing.assert_close(model.input_scale, torch.tensor([2.0, 3.0], dtype=torch.float64))


def test_members_at_once_blocks_only_float64_on_a_cpu():
    """Off the CPU (here the meta device stands for cuda) the whole batch goes at once, whatever the
    block budget."""
    model = PeriodicCNNClosure(channels=6, depth=2, kernel_size=5).double()
    model.unfold_block_bytes = 64 * 1024
    assert model.members_at_once(torch.empty(23, 40, dtype=torch.float64)) == 5
    assert model.members_at_once(torch.empty(23, 40, dtype=torch.float64, device="meta")) == 23


@pytest.mark.parametrize("make", [lambda: MLPClosure(state_dim=2, depth=0, activation="sine"),
                                  lambda: PeriodicCNNClosure(depth=0, activation="sine")])
def test_an_unknown_activation_is_refused_where_no_layer_takes_it(make):
    """depth = 0 built without complaint and stored "sine" in its spec, which no model could be built from."""
    with pytest.raises(ValueError, match=r"activation='sine'; choose one of"):
        make()
