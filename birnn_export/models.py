"""Model architectures the tool can rebuild from a checkpoint on its own.

:class:`SequenceTagger` covers the common shape of bidirectional sequence models: optional
token embedding, a stack of bidirectional recurrent layers, and a per-step linear head. The
sample models, the seed article's three examples and bare state_dicts of an embedding + built-in
recurrent layer + linear head all load into it; anything else needs the user's own class.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from birnn_export.modules import BiRNN, Cell


@dataclass(frozen=True)
class TaggerConfig:
    """Architecture of a :class:`SequenceTagger`; stored in checkpoints and ONNX metadata."""

    cell: Cell
    input_size: int
    hidden_size: int
    output_size: int
    num_layers: int = 1
    bidirectional: bool = True
    bias: bool = True
    vocab_size: int | None = None
    padding_idx: int | None = None
    uses_lengths: bool = False

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TaggerConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"config: unknown keys {unknown}; expected some of {sorted(names)}")
        return cls(**data)


class SequenceTagger(nn.Module):
    """[Embedding ->] BiRNN -> Linear, applied at every time step.

    Inputs: ``x`` float features ``[batch, time, input_size]`` (or int64 token ids
    ``[batch, time]`` when ``vocab_size`` is set), and ``lengths`` ``[batch]`` when
    ``uses_lengths``. Output: ``[batch, time, output_size]``.

    Example:
        >>> cfg = TaggerConfig(cell="lstm", input_size=10, hidden_size=20, output_size=5)
        >>> SequenceTagger(cfg)(torch.randn(2, 7, 10)).shape
        torch.Size([2, 7, 5])
    """

    def __init__(self, config: TaggerConfig) -> None:
        super().__init__()
        self.config = config
        self.embedding = (
            nn.Embedding(config.vocab_size, config.input_size, padding_idx=config.padding_idx)
            if config.vocab_size is not None
            else None
        )
        self.rnn = BiRNN(
            config.input_size,
            config.hidden_size,
            cell=config.cell,
            num_layers=config.num_layers,
            bias=config.bias,
            bidirectional=config.bidirectional,
        )
        self.head = nn.Linear(config.hidden_size * self.rnn.num_directions, config.output_size)

    def forward(self, x: Tensor, lengths: Tensor | None = None) -> Tensor:
        if self.embedding is not None:
            x = self.embedding(x)
        out, _ = self.rnn(x, lengths if self.config.uses_lengths else None)
        return self.head(out)

    def to_torch(self) -> TorchReference:
        """The same model in torch's built-in layers (a copy): the reference to verify against."""
        import copy

        embedding = copy.deepcopy(self.embedding)
        reference = TorchReference(
            self.rnn.to_torch(),
            copy.deepcopy(self.head),
            embedding,
            uses_lengths=self.config.uses_lengths,
        )
        return reference.train(self.training)


class TorchReference(nn.Module):
    """``[Embedding ->] nn.RNN/LSTM/GRU -> Linear`` built from torch's own layers.

    The reference a :class:`SequenceTagger` is verified against: with ``lengths`` it runs the
    recurrent layer on a ``PackedSequence``, as torch intends for padded batches. Parameter
    names equal :class:`SequenceTagger`'s (``embedding.*``, ``rnn.*``, ``head.*``).
    """

    def __init__(
        self,
        rnn: nn.RNNBase,
        head: nn.Linear,
        embedding: nn.Embedding | None = None,
        *,
        uses_lengths: bool = True,
    ):
        super().__init__()
        self.embedding = embedding
        self.rnn = rnn
        self.head = head
        self.uses_lengths = uses_lengths

    def forward(self, x: Tensor, lengths: Tensor | None = None) -> Tensor:
        if self.embedding is not None:
            x = self.embedding(x)
        if lengths is None or not self.uses_lengths:
            out, _ = self.rnn(x)
        else:
            packed = pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
            out, _ = self.rnn(packed)
            out, _ = pad_packed_sequence(out, batch_first=True, total_length=x.shape[1])
        return self.head(out)
