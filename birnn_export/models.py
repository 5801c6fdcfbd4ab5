"""Model architectures the tool can rebuild from a checkpoint on its own.

:class:`SequenceTagger` covers the common shape of bidirectional sequence models: optional
token embedding, a stack of bidirectional recurrent layers, and a per-step linear head. The
sample models, the seed article's three examples and bare state_dicts of an embedding + built-in
recurrent layer + linear head all load into it. :class:`CRNN` (OCR on images) and
:class:`SpeechCTC` (speech features with a strided front end and lengths) are the shapes that
need declared inputs and derived output lengths; they are written with torch's own recurrent
layers, as users write them. Anything else needs the user's own class.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from birnn_export.crf import CRFDecoder, to_torchcrf
from birnn_export.modules import BiRNN, Cell, padding_mask


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
    #: Inputs ``[batch, time, ...]`` (the default) or time-major ``[time, batch, ...]``.
    batch_first: bool = True
    #: A CRF after the head: the model returns the Viterbi decode (int64 tags ``[batch,
    #: time]``, -1 past each row's length) instead of the head's scores. Each row's length is
    #: ``lengths`` when the model uses them, else its tokens other than ``padding_idx``.
    crf: bool = False
    #: An LSTM's projection (``nn.LSTM(proj_size=...)``); 0 for none.
    proj_size: int = 0

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        for key in ("crf", "proj_size"):  # files of models without them stay as they were
            if not data[key]:
                del data[key]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TaggerConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"config: unknown keys {unknown}; expected some of {sorted(names)}")
        return cls(**data)


class SequenceTagger(nn.Module):
    """[Embedding ->] BiRNN -> Linear [-> CRF decode], applied at every time step.

    Inputs: ``x`` float features ``[batch, time, input_size]`` (or int64 token ids
    ``[batch, time]`` when ``vocab_size`` is set), and ``lengths`` ``[batch]`` when
    ``uses_lengths``. Output: ``[batch, time, output_size]``, or with ``crf`` the decoded tags
    ``[batch, time]`` (a BiLSTM-CRF tagger; :class:`~birnn_export.crf.CRFDecoder`).

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
            batch_first=config.batch_first,
            bidirectional=config.bidirectional,
            proj_size=config.proj_size,
        )
        self.head = nn.Linear(self.rnn.output_size * self.rnn.num_directions, config.output_size)
        self.crf = (
            CRFDecoder(config.output_size, batch_first=config.batch_first) if config.crf else None
        )

    def forward(self, x: Tensor, lengths: Tensor | None = None) -> Tensor:
        ids = x
        if self.embedding is not None:
            x = self.embedding(x)
        out, _ = self.rnn(x, lengths if self.config.uses_lengths else None)
        return _decode(self.crf, self.head(out), ids, lengths, self.config)

    def to_torch(self) -> TorchReference:
        """The same model in torch's built-in layers (a copy): the reference to verify against."""
        import copy

        embedding = copy.deepcopy(self.embedding)
        reference = TorchReference(
            self.rnn.to_torch(),
            copy.deepcopy(self.head),
            embedding,
            uses_lengths=self.config.uses_lengths,
            crf=None if self.crf is None else to_torchcrf(self.crf),
            config=self.config,
        )
        return reference.train(self.training)


def _decode(
    crf: nn.Module | None, emissions: Tensor, ids: Tensor, lengths: Tensor | None, config: Any
) -> Any:
    """The head's scores, or a CRF's decode of them over each row's valid steps."""
    if crf is None:
        return emissions
    time_axis = 1 if config.batch_first else 0
    if config.uses_lengths and lengths is not None:
        mask = padding_mask(lengths, emissions.shape[time_axis], batch_first=config.batch_first)
    elif config.vocab_size is not None and config.padding_idx is not None:
        mask = ids != config.padding_idx
    else:
        mask = None
    return crf.decode(emissions, mask=mask)


class TorchReference(nn.Module):
    """``[Embedding ->] nn.RNN/LSTM/GRU -> Linear`` built from torch's own layers.

    The reference a :class:`SequenceTagger` is verified against: with ``lengths`` it runs the
    recurrent layer on a ``PackedSequence``, as torch intends for padded batches; a CRF decodes
    with ``torchcrf`` (pytorch-crf) when it is installed. Parameter names equal
    :class:`SequenceTagger`'s (``embedding.*``, ``rnn.*``, ``head.*``, ``crf.*``).
    """

    def __init__(
        self,
        rnn: nn.RNNBase,
        head: nn.Linear,
        embedding: nn.Embedding | None = None,
        *,
        uses_lengths: bool = True,
        crf: nn.Module | None = None,
        config: TaggerConfig | None = None,
    ):
        super().__init__()
        self.embedding = embedding
        self.rnn = rnn
        self.head = head
        self.crf = crf
        self.uses_lengths = uses_lengths
        self.config = config
        #: Built by the loader from a bare state_dict's keys, not from the user's own class:
        #: verification then says it checked this rebuilt model.
        self.rebuilt = False

    def forward(self, x: Tensor, lengths: Tensor | None = None) -> Any:
        ids = x
        if self.embedding is not None:
            x = self.embedding(x)
        if lengths is None or not self.uses_lengths:
            out, _ = self.rnn(x)
        else:
            first = self.rnn.batch_first
            packed = pack_padded_sequence(x, lengths.cpu(), batch_first=first, enforce_sorted=False)
            out, _ = self.rnn(packed)
            steps = x.shape[1 if first else 0]
            out, _ = pad_packed_sequence(out, batch_first=first, total_length=steps)
        return _decode(self.crf, self.head(out), ids, lengths, self.config)


# -- models with a front end: what speech and OCR exports look like --------------------------


@dataclass(frozen=True)
class CRNNConfig:
    """Architecture of a :class:`CRNN`."""

    height: int = 32
    channels: tuple[int, ...] = (8, 16, 32)
    hidden_size: int = 24
    num_layers: int = 2
    classes: int = 11

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "channels": list(self.channels)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CRNNConfig:
        return cls(**{**data, "channels": tuple(data.get("channels", cls.channels))})


class CRNN(nn.Module):
    """Text-line OCR with a CTC head: Conv2d/BatchNorm/ReLU/MaxPool blocks on a grey image
    ``[batch, 1, height, width]`` (each block halves the height; the first two halve the
    width) -> the columns as a sequence -> a bidirectional ``nn.LSTM`` -> Linear ->
    log-probabilities, time-major ``[width // 4, batch, classes]`` as ``nn.CTCLoss`` takes them
    (class 0 is the CTC blank).

    Example:
        >>> CRNN(CRNNConfig())(torch.randn(2, 1, 32, 100)).shape
        torch.Size([25, 2, 11])
    """

    def __init__(self, config: CRNNConfig) -> None:
        super().__init__()
        self.config = config
        blocks: list[nn.Module] = []
        channels, height = 1, config.height
        for index, out in enumerate(config.channels):
            pool = (2, 2) if index < 2 else (2, 1)
            blocks += [
                nn.Conv2d(channels, out, 3, padding=1),
                nn.BatchNorm2d(out),
                nn.ReLU(),
                nn.MaxPool2d(pool, pool),
            ]
            channels, height = out, height // 2
        if height < 1:
            raise ValueError(
                f"height: {config.height} is too small for {len(config.channels)} blocks"
            )
        self.cnn = nn.Sequential(*blocks)
        self.rnn = nn.LSTM(
            channels * height, config.hidden_size, num_layers=config.num_layers, bidirectional=True
        )
        self.head = nn.Linear(2 * config.hidden_size, config.classes)

    def forward(self, image: Tensor) -> Tensor:
        features = self.cnn(image)  # [batch, channels, height', width']
        batch, channels, height, width = features.shape
        columns = features.reshape(batch, channels * height, width).permute(2, 0, 1)
        states, _ = self.rnn(columns)
        return self.head(states).log_softmax(-1)


@dataclass(frozen=True)
class SpeechConfig:
    """Architecture of a :class:`SpeechCTC`."""

    features: int = 40
    channels: int = 48
    hidden_size: int = 32
    num_layers: int = 2
    classes: int = 12

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SpeechConfig:
        return cls(**data)


class SpeechCTC(nn.Module):
    """Speech recognition with a CTC head: a stride-2 ``Conv1d`` on filterbank features
    ``[batch, features, time]`` that halves the frames and their lengths -> a bidirectional
    ``nn.GRU`` on the packed sequence -> Linear -> log-probabilities ``[batch, time', classes]``
    and the output lengths ``[batch]`` (``time' = (time - 1) // 2 + 1``; class 0 is the blank).

    Example:
        >>> log_probs, lengths = SpeechCTC(SpeechConfig())(torch.randn(2, 40, 9),
        ...                                                 torch.tensor([9, 4]))
        >>> log_probs.shape, lengths.tolist()
        (torch.Size([2, 5, 12]), [5, 2])
    """

    def __init__(self, config: SpeechConfig) -> None:
        super().__init__()
        self.config = config
        self.conv = nn.Conv1d(config.features, config.channels, 3, stride=2, padding=1)
        self.rnn = nn.GRU(
            config.channels,
            config.hidden_size,
            num_layers=config.num_layers,
            batch_first=True,
            bidirectional=True,
        )
        self.head = nn.Linear(2 * config.hidden_size, config.classes)

    def forward(self, features: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        frames = torch.relu(self.conv(features)).transpose(1, 2)  # [batch, time', channels]
        out_lengths = (lengths - 1) // 2 + 1
        packed = pack_padded_sequence(
            frames, out_lengths.cpu(), batch_first=True, enforce_sorted=False
        )
        states, _ = pad_packed_sequence(
            self.rnn(packed)[0], batch_first=True, total_length=frames.shape[1]
        )
        return self.head(states).log_softmax(-1), out_lengths
