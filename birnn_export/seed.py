"""The seed article's three example classes, kept verbatim for comparison and loading.

Source: "How can a bidirectional RNN be implemented manually in PyTorch?" (2025-01-30).
Examples 1 and 2 are correct for inputs without padding. Example 3 is wrong for every row shorter
than the padded batch: it flips the whole padded tensor (``torch.flip(x, [1])``) and then packs
it, so a short row starts with padding; packing keeps the first ``length`` steps, i.e. padding,
and drops real steps from the end. The backward output is then flipped back over the padded
length, which misaligns it again. The article also claims both directions share weights; they
do not (torch keeps separate ``*_reverse`` weights, and so do these classes).

The correct reversal reverses only each row's valid prefix:
:func:`birnn_export.modules.reverse_padded`, or ONNX ``ReverseSequence``.
"""

from __future__ import annotations

import torch
import torch.nn.utils.rnn as rnn_utils
from torch import nn


class ManualBidirectionalRNN(nn.Module):
    """Example 1: two ``nn.RNN`` (tanh), flip for the backward pass."""

    def __init__(self, input_size: int, hidden_size: int, output_size: int) -> None:
        super().__init__()
        self.hidden_size = hidden_size
        self.forward_rnn = nn.RNN(input_size, hidden_size, nonlinearity="tanh", batch_first=True)
        self.backward_rnn = nn.RNN(input_size, hidden_size, nonlinearity="tanh", batch_first=True)
        self.output_layer = nn.Linear(2 * hidden_size, output_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        forward_output, _ = self.forward_rnn(x)
        backward_output, _ = self.backward_rnn(torch.flip(x, [1]))
        backward_output = torch.flip(backward_output, [1])
        return self.output_layer(torch.cat((forward_output, backward_output), dim=2))


class ManualBidirectionalLSTM(nn.Module):
    """Example 2: the same with ``nn.LSTM``."""

    def __init__(self, input_size: int, hidden_size: int, output_size: int) -> None:
        super().__init__()
        self.hidden_size = hidden_size
        self.forward_lstm = nn.LSTM(input_size, hidden_size, batch_first=True)
        self.backward_lstm = nn.LSTM(input_size, hidden_size, batch_first=True)
        self.output_layer = nn.Linear(2 * hidden_size, output_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        forward_output, _ = self.forward_lstm(x)
        backward_output, _ = self.backward_lstm(torch.flip(x, [1]))
        backward_output = torch.flip(backward_output, [1])
        return self.output_layer(torch.cat((forward_output, backward_output), dim=2))


class ManualBidirectionalRNNVariableLength(nn.Module):
    """Example 3, as published: flip-then-pack. Wrong for rows shorter than the batch."""

    def __init__(self, input_size: int, hidden_size: int, output_size: int) -> None:
        super().__init__()
        self.hidden_size = hidden_size
        self.forward_rnn = nn.RNN(input_size, hidden_size, batch_first=True)
        self.backward_rnn = nn.RNN(input_size, hidden_size, batch_first=True)
        self.output_layer = nn.Linear(2 * hidden_size, output_size)

    def forward(self, x: torch.Tensor, seq_lengths: torch.Tensor) -> torch.Tensor:
        packed_x = rnn_utils.pack_padded_sequence(
            x, seq_lengths.cpu(), batch_first=True, enforce_sorted=False
        )
        forward_output, _ = self.forward_rnn(packed_x)
        forward_output, _ = rnn_utils.pad_packed_sequence(forward_output, batch_first=True)
        packed_x_reversed = rnn_utils.pack_padded_sequence(
            torch.flip(x, [1]), seq_lengths.cpu(), batch_first=True, enforce_sorted=False
        )
        backward_output, _ = self.backward_rnn(packed_x_reversed)
        backward_output, _ = rnn_utils.pad_packed_sequence(backward_output, batch_first=True)
        backward_output = torch.flip(backward_output, [1])
        combined_output = torch.cat((forward_output, backward_output), dim=2)
        return self.output_layer(combined_output)
