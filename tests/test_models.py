"""SequenceTagger against the same weights in torch's own layers."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from birnn_export.models import SequenceTagger, TaggerConfig, TorchReference


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn_tanh", "rnn_relu"])
@pytest.mark.parametrize("tokens", [False, True])
def test_tagger_equals_torch_layers_on_packed_input(cell, tokens):
    torch.manual_seed(0)
    config = TaggerConfig(
        cell=cell,
        input_size=6,
        hidden_size=5,
        output_size=3,
        num_layers=2,
        vocab_size=20 if tokens else None,
        padding_idx=0 if tokens else None,
        uses_lengths=True,
    )
    tagger = SequenceTagger(config).eval()
    reference = tagger.to_torch().eval()
    assert isinstance(reference, TorchReference) and isinstance(reference.rnn, nn.RNNBase)
    assert set(reference.state_dict()) == set(tagger.state_dict())
    x = torch.randint(0, 20, (4, 9)) if tokens else torch.randn(4, 9, 6)
    lengths = torch.tensor([9, 1, 4, 7])
    with torch.no_grad():
        torch.testing.assert_close(tagger(x, lengths), reference(x, lengths), atol=1e-6, rtol=0)
        torch.testing.assert_close(tagger(x), reference(x), atol=1e-6, rtol=0)


def test_tagger_without_lengths_ignores_them_like_its_reference():
    config = TaggerConfig(cell="gru", input_size=4, hidden_size=3, output_size=2)
    tagger = SequenceTagger(config).eval()
    x, lengths = torch.randn(2, 5, 4), torch.tensor([5, 2])
    with torch.no_grad():
        assert torch.equal(tagger(x, lengths), tagger(x))
        torch.testing.assert_close(tagger.to_torch()(x, lengths), tagger(x), atol=1e-6, rtol=0)


def test_config_round_trip_and_unknown_keys():
    config = TaggerConfig(cell="lstm", input_size=3, hidden_size=4, output_size=2, vocab_size=9)
    assert TaggerConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match="unknown keys"):
        TaggerConfig.from_dict({**config.to_dict(), "dropout": 0.1})


def test_to_torch_is_a_copy():
    tagger = SequenceTagger(TaggerConfig(cell="lstm", input_size=3, hidden_size=4, output_size=2))
    reference = tagger.to_torch()
    with torch.no_grad():
        reference.head.weight.zero_()
    assert tagger.head.weight.abs().sum() > 0
