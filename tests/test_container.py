"""A forward that takes one container of its inputs (``birnn_export._container``)."""

from __future__ import annotations

import copy
from types import SimpleNamespace

import torch
from torch import nn

from birnn_export._container import Container, container_kind, discover, fed_as
from tests.realistic_models import (
    AttentionClassifier,
    AttributeBatchEncoder,
    DictBatchTagger,
    PackingTagger,
)


class _TensorFirst(nn.Module):
    """Reads its tensor argument as tensors do (shape, an index, a method) before a layer."""

    def __init__(self) -> None:
        super().__init__()
        self.gru = nn.GRU(4, 3, batch_first=True, bidirectional=True)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        steps = x.shape[1]
        x = x[:, :steps].float()
        return self.gru(x)[0]


def _plan_stub(model: nn.Module) -> SimpleNamespace:
    """Example tensors per key, as planning would make them (tokens, then lengths)."""
    keys = list(model._birnn_container["keys"])
    tensors = []
    for key in keys:
        if key.endswith(("lengths", "lens")) or key == "indices":
            tensors.append(torch.tensor([4, 2]))
        elif key == "tokens":
            tensors.append(torch.randint(1, 50, (2, 4)))
        else:
            tensors.append(torch.randn(2, 4, 7))
    return SimpleNamespace(tensors=tuple(tensors), keys=keys)


def test_a_tensor_argument_is_not_taken_for_a_container():
    for model in (_TensorFirst(), AttentionClassifier(), PackingTagger(), nn.LSTM(3, 4)):
        assert container_kind(model) is None


def test_the_keys_a_forward_reads_are_found_by_running_it():
    torch.manual_seed(0)
    tagger, encoder = DictBatchTagger().eval(), AttributeBatchEncoder().eval()
    assert container_kind(tagger) == "dict" and container_kind(encoder) == "attributes"
    found, _ = discover(tagger, "dict", _plan_stub)
    # read lengths first, tokens second: the sequence goes first; the optional mask stays out
    assert found == Container("batch", "dict", ("tokens", "lengths"))
    found, _ = discover(encoder, "attributes", _plan_stub)
    assert found == Container("batch", "attributes", ("feats", "feat_lens"))


def test_a_fed_model_passes_its_inputs_in_the_container_and_shares_the_weights():
    torch.manual_seed(0)
    model = DictBatchTagger().eval()
    container = Container("batch", "dict", ("tokens", "lengths"))
    fed = fed_as(model, container)
    assert type(model) is DictBatchTagger and isinstance(fed, DictBatchTagger)
    assert fed_as(fed, container.to_dict()) is fed and fed_as(model, None) is model
    assert fed.lstm is model.lstm and list(fed.state_dict()) == list(model.state_dict())
    tokens, lengths = torch.randint(1, 50, (3, 6)), torch.tensor([6, 2, 1])
    with torch.no_grad():
        want = model({"tokens": tokens, "lengths": lengths})
        assert torch.equal(fed(tokens, lengths), want)
        assert torch.equal(copy.deepcopy(fed)(tokens, lengths), want)


class _MovesToDevice(nn.Module):
    """Copies its dict to the model's device first, as training loops write it."""

    def __init__(self) -> None:
        super().__init__()
        self.gru = nn.GRU(7, 3, batch_first=True, bidirectional=True)

    def forward(self, batch: dict) -> torch.Tensor:
        device = next(self.parameters()).device
        batch = {key: value.to(device) for key, value in batch.items()}
        return self.gru(batch["feats"])[0] * (batch["feat_lens"] > 0)[:, None, None]


class _CallsAMethod(nn.Module):
    """Reads a field, then calls a method of its batch object (batch.max_len())."""

    def __init__(self) -> None:
        super().__init__()
        self.gru = nn.GRU(7, 3, batch_first=True, bidirectional=True)

    def forward(self, batch: object) -> torch.Tensor:
        return self.gru(batch.feats)[0][:, : batch.max_len()]  # type: ignore[attr-defined]


class _SparseNamed(nn.Module):
    """A field named like a tensor method: batch.indices."""

    def __init__(self) -> None:
        super().__init__()
        self.gru = nn.GRU(7, 3, batch_first=True, bidirectional=True)

    def forward(self, batch: object) -> torch.Tensor:
        return self.gru(batch.feats)[0] * batch.indices[:, None, None]  # type: ignore[attr-defined]


def test_a_dict_copied_before_it_is_read_and_fields_named_like_tensor_methods_are_found():
    assert container_kind(_MovesToDevice()) == "dict"
    found, _ = discover(_MovesToDevice(), "dict", _plan_stub)
    assert found.keys == ("feats", "feat_lens")
    assert container_kind(_SparseNamed()) == "attributes"
    found, _ = discover(_SparseNamed(), "attributes", _plan_stub)
    assert found.keys == ("feats", "indices")


def test_a_container_whose_method_forward_calls_is_not_taken_for_tensors():
    """A key that forward calls is a method: no graph input carries it (it was planned as a
    third input, and refused as one)."""
    assert container_kind(_CallsAMethod()) == "attributes"
    assert discover(_CallsAMethod(), "attributes", _plan_stub) is None
