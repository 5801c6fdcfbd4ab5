"""Trace-friendly bidirectional RNN, LSTM and GRU layers.

:class:`BiRNN` is a drop-in equivalent of ``nn.RNN`` / ``nn.LSTM`` / ``nn.GRU``: it keeps the
same parameters under the same names (so state_dicts load either way) and returns the same
outputs, with one difference that matters for deployment: variable-length batches are passed as
a padded tensor plus ``lengths`` instead of a ``PackedSequence``, and the layer is decomposed into
what ONNX can express directly.

* Eager mode runs each direction of each layer with torch's own fused kernel. The backward
  direction reverses only each row's valid prefix (never the whole padded tensor, which is the
  bug in the usual flip-then-pack recipe), so outputs and final states equal torch's layer on a
  ``PackedSequence``.
* Under ``torch.onnx.export`` the same decomposition is emitted as ONNX ``LSTM`` / ``GRU`` /
  ``RNN`` nodes with ``sequence_lens``, either one ``direction="bidirectional"`` node per layer
  (``"fused"``) or a forward node plus a forward node between two ``ReverseSequence`` nodes
  (``"split"``). Batch and time stay symbolic; nothing is unrolled. An LSTM with ``proj_size``,
  which ONNX's ``LSTM`` cannot express, is emitted as this package's ``LSTMP`` node, which every
  export rewrites into a ``Scan`` loop of standard ops (:mod:`birnn_export._scan`).

One cohesive module, over 600 lines: the BiRNN layer, eager and traced, and the reversal
helpers it is built from.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

Cell = Literal["lstm", "gru", "rnn_tanh", "rnn_relu"]
OnnxLayout = Literal["split", "fused"]

#: Number of gates (blocks of ``hidden_size`` rows) in each cell's weight matrices.
GATES: dict[str, int] = {"lstm": 4, "gru": 3, "rnn_tanh": 1, "rnn_relu": 1}
#: Rows of torch's gate blocks in ONNX order: LSTM (i,f,g,o) -> (i,o,f,c); GRU (r,z,n) -> (z,r,h).
ONNX_GATE_ORDER: dict[str, tuple[int, ...]] = {
    "lstm": (0, 3, 1, 2),
    "gru": (1, 0, 2),
    "rnn_tanh": (0,),
    "rnn_relu": (0,),
}
#: ``metadata_props`` key carrying an emitted recurrent node's intended name.
NODE_NAME_KEY = "birnn_export.node"
ONNX_OP: dict[str, str] = {"lstm": "LSTM", "gru": "GRU", "rnn_tanh": "RNN", "rnn_relu": "RNN"}
#: Domain and op an LSTM with ``proj_size`` is traced as (ONNX's ``LSTM`` has no projection):
#: ``LSTM``'s inputs, then ``P [D, proj_size, hidden_size]``; every export rewrites it into a
#: ``Scan`` loop of standard ops (:func:`birnn_export._scan.scan_lstmp_nodes`).
LSTMP_DOMAIN = "birnn_export"
LSTMP_OP = f"{LSTMP_DOMAIN}::LSTMP"
_KERNELS = {
    "lstm": torch.lstm,
    "gru": torch.gru,
    "rnn_tanh": torch.rnn_tanh,
    "rnn_relu": torch.rnn_relu,
}
_INT_DTYPES = (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8)

Hidden = Tensor | tuple[Tensor, Tensor]


@dataclass(frozen=True)
class TracedPack:
    """What ``pack_padded_sequence`` returns while :func:`birnn_export.export.trace_graph` traces.

    A ``PackedSequence`` sorts and flattens by data-dependent lengths, which
    ``torch.onnx.export`` cannot trace (pytorch/pytorch#112044). During export the packing
    functions are swapped for ones that keep the padded tensor and its lengths together in this
    object; :class:`BiRNN` runs it as ``(x, lengths)`` and ``pad_packed_sequence`` unwraps it.
    """

    data: Tensor
    lengths: Tensor
    batch_first: bool


def reverse_padded(x: Tensor, lengths: Tensor, *, time_dim: int = 1) -> Tensor:
    """Reverse each row's first ``lengths[b]`` steps and leave the padding where it is.

    This is what ONNX ``ReverseSequence`` does, written as one ``gather`` so it traces with
    symbolic shapes. ``torch.flip`` over the padded tensor is *not* equivalent for rows shorter
    than the batch: it moves the padding to the front.

    Example:
        >>> x = torch.arange(4.0).view(1, 4, 1)
        >>> reverse_padded(x, torch.tensor([3])).flatten().tolist()
        [2.0, 1.0, 0.0, 3.0]
    """
    batch_dim = 1 - time_dim if time_dim in (0, 1) else 0
    steps = torch.arange(x.shape[time_dim], device=x.device)
    lens = lengths.to(x.device).unsqueeze(1)  # [B, 1]
    idx = torch.where(steps.unsqueeze(0) < lens, lens - 1 - steps.unsqueeze(0), steps)  # [B, T]
    if time_dim == 0:
        idx = idx.transpose(0, 1)
    shape = [1] * x.dim()
    shape[batch_dim], shape[time_dim] = idx.shape[batch_dim], idx.shape[time_dim]
    return torch.gather(x, time_dim, idx.reshape(shape).expand(x.shape))


def padding_mask(lengths: Tensor, steps: int | torch.SymInt, *, batch_first: bool = True) -> Tensor:
    """Boolean mask, True at valid positions: ``[B, T]`` (or ``[T, B]``)."""
    mask = torch.arange(steps, device=lengths.device).unsqueeze(0) < lengths.unsqueeze(1)
    return mask if batch_first else mask.transpose(0, 1)


def _packed_reverse_index(batch_sizes: Tensor) -> Tensor:
    """Index into a PackedSequence's data that reverses every sequence within its own length.

    Element ``k`` of packed data sits at time ``t`` and slot ``s`` (its rank in the sorted batch).
    Its partner in the reversed sequence is at time ``len[s] - 1 - t``, same slot. The permutation
    is its own inverse, so the same index maps back.
    """
    batch_sizes = batch_sizes.to(torch.int64)
    offsets = torch.cumsum(batch_sizes, 0) - batch_sizes
    slots = torch.arange(int(batch_sizes[0]))
    lens = (batch_sizes.unsqueeze(0) > slots.unsqueeze(1)).sum(1)
    t = torch.repeat_interleave(torch.arange(len(batch_sizes)), batch_sizes)
    s = torch.arange(len(t)) - offsets[t]
    return offsets[lens[s] - 1 - t] + s


def _is_state(value: object) -> bool:
    """A 3-D tensor ([layers * directions, batch, hidden]): an initial state, never lengths."""
    return isinstance(value, Tensor) and value.dim() == 3


class BiRNN(nn.Module):
    """A bidirectional (or unidirectional) multi-layer RNN, LSTM or GRU that exports cleanly.

    Args:
        input_size: Features per time step.
        hidden_size: Hidden units per direction.
        cell: ``"lstm"``, ``"gru"``, ``"rnn_tanh"`` or ``"rnn_relu"``.
        num_layers: Stacked layers; layer ``k + 1`` reads layer ``k``'s concatenated output.
        bias: Whether the cells have bias vectors (torch's ``bias``).
        batch_first: Input and output are ``[batch, time, features]`` (default) rather than
            ``[time, batch, features]``.
        dropout: Dropout between layers during training, as in torch.
        bidirectional: Run a second, independently weighted, backward direction.
        padding_value: Value written to output positions past each row's length.
        proj_size: LSTM only: project each step's hidden state to this many units, as
            ``nn.LSTM(proj_size=...)`` does (``h = W_hr (o * tanh(c))``); 0 for none. Outputs
            and ``h_n`` then have ``proj_size`` units per direction, ``c_n`` ``hidden_size``.

    ``forward(x, lengths=None, hx=None)`` returns ``(output, h_n)``, or ``(output, (h_n, c_n))``
    for LSTM, with torch's shapes and layer/direction order. With ``lengths`` the result equals the
    torch layer run on ``pack_padded_sequence(x, lengths, enforce_sorted=False)`` and padded back.
    A ``PackedSequence`` is accepted too and gives a ``PackedSequence`` back.

    Example:
        >>> layer = BiRNN(10, 20, cell="lstm", num_layers=2)
        >>> out, (h, c) = layer(torch.randn(3, 7, 10), torch.tensor([7, 2, 5]))
        >>> out.shape, h.shape
        (torch.Size([3, 7, 40]), torch.Size([4, 3, 20]))
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        *,
        cell: Cell = "lstm",
        num_layers: int = 1,
        bias: bool = True,
        batch_first: bool = True,
        dropout: float = 0.0,
        bidirectional: bool = True,
        padding_value: float = 0.0,
        proj_size: int = 0,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        if cell not in GATES:
            raise ValueError(f"cell: expected one of {sorted(GATES)}, got {cell!r}")
        for name, value in (("input_size", input_size), ("hidden_size", hidden_size)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}: expected a positive int, got {value!r}")
        if not isinstance(num_layers, int) or num_layers < 1:
            raise ValueError(f"num_layers: expected a positive int, got {num_layers!r}")
        if not 0.0 <= dropout <= 1.0:
            raise ValueError(f"dropout: expected a value in [0, 1], got {dropout!r}")
        if not isinstance(proj_size, int) or proj_size < 0 or proj_size >= hidden_size:
            raise ValueError(
                f"proj_size: expected an int in [0, hidden_size={hidden_size}), got {proj_size!r}"
            )
        if proj_size and cell != "lstm":
            raise ValueError(f"proj_size: only an LSTM projects its state, not cell {cell!r}")
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.cell: Cell = cell
        self.num_layers = num_layers
        self.bias = bias
        self.batch_first = batch_first
        self.dropout = float(dropout)
        self.bidirectional = bidirectional
        self.padding_value = float(padding_value)
        #: ``nn.LSTM`` and so on where :meth:`from_torch` made it, else ``None``
        self.converted_from: str | None = None
        self.proj_size = proj_size
        #: Which ONNX node layout ``torch.onnx.export`` emits; set by
        #: :func:`~birnn_export.export.trace_graph`.
        self.onnx_layout: OnnxLayout = "split"
        #: Name prefix of the emitted recurrent nodes (the module path); set by trace_graph.
        self.onnx_name = "rnn"

        gate_rows = GATES[cell] * hidden_size
        factory = {"device": device, "dtype": dtype}
        for layer in range(num_layers):
            layer_input = input_size if layer == 0 else self.output_size * self.num_directions
            for suffix in self._suffixes:
                names = self._param_names(layer, suffix)
                shapes = [(gate_rows, layer_input), (gate_rows, self.output_size)]
                shapes += [(gate_rows,), (gate_rows,)] if bias else []
                shapes += [(proj_size, hidden_size)] if proj_size else []
                for name, shape in zip(names, shapes, strict=True):
                    self.register_parameter(name, nn.Parameter(torch.empty(shape, **factory)))
        self.reset_parameters()

    # -- structure ---------------------------------------------------------------------------

    @property
    def num_directions(self) -> int:
        return 2 if self.bidirectional else 1

    @property
    def output_size(self) -> int:
        """Units per direction of the output and ``h_n``: ``proj_size``, else ``hidden_size``."""
        return self.proj_size or self.hidden_size

    @property
    def _suffixes(self) -> tuple[str, ...]:
        return ("", "_reverse") if self.bidirectional else ("",)

    def _param_names(self, layer: int, suffix: str) -> list[str]:
        names = [f"weight_ih_l{layer}{suffix}", f"weight_hh_l{layer}{suffix}"]
        if self.bias:
            names += [f"bias_ih_l{layer}{suffix}", f"bias_hh_l{layer}{suffix}"]
        if self.proj_size:
            names.append(f"weight_hr_l{layer}{suffix}")
        return names

    def direction_weights(self, layer: int, direction: int) -> list[Tensor]:
        """``[weight_ih, weight_hh(, bias_ih, bias_hh)(, weight_hr)]`` of one layer and
        direction, in torch's order."""
        return [getattr(self, n) for n in self._param_names(layer, self._suffixes[direction])]

    def reset_parameters(self) -> None:
        """Initialise as torch does: U(-1/sqrt(hidden_size), 1/sqrt(hidden_size))."""
        bound = 1.0 / math.sqrt(self.hidden_size)
        for weight in self.parameters():
            nn.init.uniform_(weight, -bound, bound)

    def flatten_parameters(self) -> None:
        """Nothing to do: torch's layers compact their weights for cuDNN here, and models call
        it in ``forward``; these weights are used as they are."""

    def extra_repr(self) -> str:
        return (
            f"{self.input_size}, {self.hidden_size}, cell={self.cell!r}, "
            f"num_layers={self.num_layers}, bias={self.bias}, batch_first={self.batch_first}, "
            f"dropout={self.dropout}, bidirectional={self.bidirectional}, "
            f"padding_value={self.padding_value}"
            + (f", proj_size={self.proj_size}" if self.proj_size else "")
        )

    # -- conversion to and from torch's layers ----------------------------------------------

    @classmethod
    def from_torch(cls, layer: nn.RNNBase, *, padding_value: float = 0.0) -> BiRNN:
        """Build an exact copy of an ``nn.RNN``, ``nn.LSTM`` or ``nn.GRU`` (same weights)."""
        cell = _cell_of(layer)
        weight = layer.weight_ih_l0
        new = cls(
            layer.input_size,
            layer.hidden_size,
            cell=cell,
            num_layers=layer.num_layers,
            bias=layer.bias,
            batch_first=layer.batch_first,
            dropout=layer.dropout,
            bidirectional=layer.bidirectional,
            padding_value=padding_value,
            proj_size=getattr(layer, "proj_size", 0),
            device=weight.device,
            dtype=weight.dtype,
        )
        new.load_state_dict(layer.state_dict())
        new.train(layer.training)
        new.converted_from = f"nn.{type(layer).__name__}"
        return new

    def to_torch(self) -> nn.RNNBase:
        """Return the equivalent ``nn.RNN`` / ``nn.LSTM`` / ``nn.GRU`` with the same weights."""
        weight = self.weight_ih_l0
        kwargs = dict(
            num_layers=self.num_layers,
            bias=self.bias,
            batch_first=self.batch_first,
            dropout=self.dropout,
            bidirectional=self.bidirectional,
            device=weight.device,
            dtype=weight.dtype,
        )
        if self.cell == "lstm":
            layer: nn.RNNBase = nn.LSTM(
                self.input_size, self.hidden_size, proj_size=self.proj_size, **kwargs
            )
        elif self.cell == "gru":
            layer = nn.GRU(self.input_size, self.hidden_size, **kwargs)
        else:
            nonlinearity = self.cell.removeprefix("rnn_")
            layer = nn.RNN(self.input_size, self.hidden_size, nonlinearity=nonlinearity, **kwargs)
        layer.load_state_dict(self.state_dict())
        layer.train(self.training)
        return layer

    # -- forward -----------------------------------------------------------------------------

    def forward(
        self,
        x: Tensor | PackedSequence,
        lengths: Tensor | None = None,
        hx: Hidden | None = None,
    ) -> tuple[Tensor | PackedSequence, Hidden]:
        if hx is None and (isinstance(lengths, tuple) or _is_state(lengths)):
            lengths, hx = None, lengths  # torch's own signature, layer(input, hx), after convert()
        if isinstance(x, PackedSequence):
            if lengths is not None:
                raise ValueError("lengths: must be None when x is a PackedSequence")
            return self._forward_packed_sequence(x, hx)
        if isinstance(x, TracedPack):
            data = x.data if x.batch_first == self.batch_first else x.data.transpose(0, 1)
            out, hidden = self.forward(data, x.lengths, hx)
            return TracedPack(out, x.lengths, self.batch_first), hidden
        self._check_input(x, lengths, hx)
        if torch.onnx.is_in_onnx_export():
            return self._forward_onnx(x, lengths, hx)
        steps = x.shape[1 if self.batch_first else 0]
        lengths_cpu = None if lengths is None else lengths.cpu()
        if lengths_cpu is None or bool((lengths_cpu == steps).all()):
            return self._forward_dense(x, hx)  # no row is padded: nothing to pack
        packed = pack_padded_sequence(
            x, lengths_cpu, batch_first=self.batch_first, enforce_sorted=False
        )
        out, hidden = self._forward_packed_sequence(packed, hx)
        out, _ = pad_packed_sequence(
            out,
            batch_first=self.batch_first,
            padding_value=self.padding_value,
            total_length=steps,
        )
        return out, hidden

    def _check_input(self, x: Tensor, lengths: Tensor | None, hx: Hidden | None) -> None:
        if not isinstance(x, Tensor):
            raise ValueError(f"x: expected a Tensor or PackedSequence, got {type(x).__name__}")
        if x.dim() != 3:
            layout = "[batch, time, features]" if self.batch_first else "[time, batch, features]"
            raise ValueError(f"x: expected a 3-D tensor {layout}, got shape {tuple(x.shape)}")
        if not x.is_floating_point():
            raise ValueError(f"x: expected a floating-point tensor, got {x.dtype}")
        if x.dtype != self.weight_ih_l0.dtype:
            raise ValueError(
                f"x: dtype {x.dtype} does not match the layer's weights "
                f"({self.weight_ih_l0.dtype}); convert one with .to()"
            )
        if x.shape[2] != self.input_size:
            raise ValueError(
                f"x: expected {self.input_size} features in the last dimension, got {x.shape[2]}"
            )
        batch = x.shape[0 if self.batch_first else 1]
        steps = x.shape[1 if self.batch_first else 0]
        if lengths is not None:
            if not isinstance(lengths, Tensor) or lengths.dtype not in _INT_DTYPES:
                got = lengths.dtype if isinstance(lengths, Tensor) else type(lengths).__name__
                raise ValueError(f"lengths: expected an integer tensor (int64), got {got}")
            if lengths.dim() != 1 or lengths.shape[0] != batch:
                raise ValueError(
                    f"lengths: expected shape [{batch}] (one length per batch row), "
                    f"got {tuple(lengths.shape)}"
                )
            if not _is_tracing():
                low, high = int(lengths.min()), int(lengths.max())
                if low < 1 or high > steps:
                    raise ValueError(
                        f"lengths: every length must lie in [1, {steps}] (the padded time "
                        f"dimension), got min {low}, max {high}"
                    )
        if hx is not None:
            states = hx if isinstance(hx, tuple) else (hx,)
            if (self.cell == "lstm") != isinstance(hx, tuple) or len(states) not in (1, 2):
                kind = "a tuple (h_0, c_0)" if self.cell == "lstm" else "one tensor h_0"
                raise ValueError(f"hx: expected {kind} for cell {self.cell!r}")
            for state, units in zip(states, (self.output_size, self.hidden_size), strict=False):
                expected = (self.num_layers * self.num_directions, batch, units)
                if tuple(state.shape) != expected:
                    raise ValueError(f"hx: expected shape {expected}, got {tuple(state.shape)}")

    def _initial_state(self, hx: Hidden | None, batch: int, like: Tensor) -> list[Tensor]:
        if hx is None:
            layers = self.num_layers * self.num_directions
            h = like.new_zeros(layers, batch, self.output_size)
            return (
                [h, like.new_zeros(layers, batch, self.hidden_size)] if self.cell == "lstm" else [h]
            )
        return list(hx) if isinstance(hx, tuple) else [hx]

    @staticmethod
    def _pack_states(states: list[Tensor]) -> Hidden:
        return (states[0], states[1]) if len(states) == 2 else states[0]

    def _run_direction(
        self,
        x: Tensor,
        batch_sizes: Tensor | None,
        states: list[Tensor],
        layer: int,
        direction: int,
    ) -> tuple[Tensor, list[Tensor]]:
        """One layer, one direction, through torch's fused kernel; x is time-major or packed."""
        kernel = _KERNELS[self.cell]
        index = layer * self.num_directions + direction
        h0 = [s[index : index + 1] for s in states]
        hidden = tuple(h0) if self.cell == "lstm" else h0[0]
        weights = self.direction_weights(layer, direction)
        if batch_sizes is None:
            result = kernel(x, hidden, weights, self.bias, 1, 0.0, False, False, False)
        else:
            result = kernel(x, batch_sizes, hidden, weights, self.bias, 1, 0.0, False, False)
        return result[0], list(result[1:])

    def _layers(
        self, x: Tensor, batch_sizes: Tensor | None, reverse: Tensor | None, hx: list[Tensor]
    ):
        """Run all layers on time-major (``reverse is None``) or packed input."""
        finals: list[list[Tensor]] = [[] for _ in hx]
        for layer in range(self.num_layers):
            outputs = []
            for direction in range(self.num_directions):
                if direction == 0:
                    inp = x
                else:
                    inp = x.flip(0) if reverse is None else x.index_select(0, reverse)
                out, last = self._run_direction(inp, batch_sizes, hx, layer, direction)
                if direction == 1:
                    out = out.flip(0) if reverse is None else out.index_select(0, reverse)
                outputs.append(out)
                for store, state in zip(finals, last, strict=True):
                    store.append(state)
            x = torch.cat(outputs, dim=-1) if len(outputs) > 1 else outputs[0]
            if self.training and self.dropout > 0 and layer < self.num_layers - 1:
                x = nn.functional.dropout(x, self.dropout, training=True)
        return x, [torch.cat(store, 0) for store in finals]

    def _forward_dense(self, x: Tensor, hx: Hidden | None) -> tuple[Tensor, Hidden]:
        xt = x.transpose(0, 1) if self.batch_first else x
        states = self._initial_state(hx, xt.shape[1], xt)
        out, finals = self._layers(xt, None, None, states)
        out = out.transpose(0, 1) if self.batch_first else out
        return out, self._pack_states(finals)

    def _forward_packed_sequence(
        self, packed: PackedSequence, hx: Hidden | None
    ) -> tuple[PackedSequence, Hidden]:
        if packed.data.dim() != 2 or packed.data.shape[1] != self.input_size:
            raise ValueError(
                f"x: expected packed data of shape [N, {self.input_size}], "
                f"got {tuple(packed.data.shape)}"
            )
        batch = int(packed.batch_sizes[0])
        states = self._initial_state(hx, batch, packed.data)
        if hx is not None and packed.sorted_indices is not None:
            states = [s.index_select(1, packed.sorted_indices) for s in states]
        reverse = _packed_reverse_index(packed.batch_sizes).to(packed.data.device)
        data, finals = self._layers(packed.data, packed.batch_sizes, reverse, states)
        if packed.unsorted_indices is not None:
            finals = [s.index_select(1, packed.unsorted_indices) for s in finals]
        out = PackedSequence(
            data, packed.batch_sizes, packed.sorted_indices, packed.unsorted_indices
        )
        return out, self._pack_states(finals)

    # -- ONNX --------------------------------------------------------------------------------

    def onnx_weights(self, layer: int) -> tuple[list[Tensor], ...]:
        """Per direction, in ONNX gate order: ``W [G*H, I]``, ``R [G*H, H]``, ``B [2*G*H]``,
        and with ``proj_size`` the projection ``P [proj_size, H]`` (``R`` is then
        ``[G*H, proj_size]``)."""
        order = ONNX_GATE_ORDER[self.cell]
        hidden = self.hidden_size

        def reorder(t: Tensor) -> Tensor:
            return torch.cat([t[g * hidden : (g + 1) * hidden] for g in order], 0)

        ws, rs, bs, ps = [], [], [], []
        for direction in range(self.num_directions):
            params = self.direction_weights(layer, direction)
            ws.append(reorder(params[0]))
            rs.append(reorder(params[1]))
            if self.bias:
                bs.append(torch.cat([reorder(params[2]), reorder(params[3])], 0))
            else:
                bs.append(params[0].new_zeros(2 * GATES[self.cell] * hidden))
            if self.proj_size:
                ps.append(params[-1])
        return (ws, rs, bs, ps) if self.proj_size else (ws, rs, bs)

    def _onnx_attrs(self, direction: str, num_directions: int) -> dict:
        attrs: dict = {"hidden_size": self.hidden_size, "direction": direction}
        if self.proj_size:
            attrs["proj_size"] = self.proj_size
        if self.cell == "gru":
            attrs["linear_before_reset"] = 1  # torch applies r after the hidden matmul
        if self.cell == "rnn_relu":
            attrs["activations"] = ["Relu"] * num_directions
        return attrs

    def node_weights(
        self, layer: int, directions: Sequence[int], dtype: torch.dtype
    ) -> tuple[Tensor, ...]:
        """One ONNX node's ``W [D, G*H, I]``, ``R [D, G*H, H]``, ``B [D, 2*G*H]`` (and
        ``P [D, proj_size, H]``) in ``dtype``, for ``directions`` of ``layer``: the buffers
        :func:`onnx_weight_constants` registered, else computed from the parameters."""
        key = _weights_key(layer, directions, dtype)
        parts = _WEIGHT_PARTS[: 4 if self.proj_size else 3]
        if hasattr(self, f"{key}_w"):
            return tuple(getattr(self, f"{key}{part}") for part in parts)
        return tuple(
            torch.stack([t[d] for d in directions]).to(dtype) for t in self.onnx_weights(layer)
        )

    def _onnx_node(
        self,
        x: Tensor,
        layer: int,
        directions: Sequence[int],
        seq_lens: Tensor | None,
        init: list[Tensor | None],
        direction: str,
        name: str,
    ) -> tuple[Tensor, list[Tensor]]:
        """Emit one ONNX recurrent node on ``x [T, B, I]``; return ``Y [T, D, B, H]``, finals.

        ``name`` travels in the node's ``metadata_props`` (key :data:`NODE_NAME_KEY`); the
        exporter names nodes itself, and :func:`~birnn_export.export.trace_graph` renames them
        from it.
        """
        steps, batch = x.shape[0], x.shape[1]
        dirs = len(directions)
        compute = recurrent_dtype(x.dtype, ragged=seq_lens is not None)
        weights = self.node_weights(layer, directions, compute)
        inputs: list[Tensor | None] = [x.to(compute), *weights[:3], seq_lens]
        inputs += [s if s is None else s.to(compute) for s in init]
        inputs += weights[3:]  # LSTMP: the projection, last
        units = [self.output_size, self.output_size, self.hidden_size]
        n_out = 3 if self.cell == "lstm" else 2
        shapes = [[steps, dirs, batch, units[0]]] + [[dirs, batch, u] for u in units[1:n_out]]
        outs = torch.onnx.ops.symbolic_multi_out(
            LSTMP_OP if self.proj_size else ONNX_OP[self.cell],
            inputs,
            self._onnx_attrs(direction, dirs),
            dtypes=[compute] * n_out,
            shapes=shapes,
            version=14,
            metadata_props={NODE_NAME_KEY: name},
        )
        outs = [o.to(x.dtype) for o in outs]
        return outs[0], outs[1:]

    def _forward_onnx(self, x: Tensor, lengths: Tensor | None, hx: Hidden | None):
        xt = x.transpose(0, 1) if self.batch_first else x
        steps, batch = xt.shape[0], xt.shape[1]
        full = lengths is None
        if full:
            lengths = torch.ones_like(xt[0, :, 0], dtype=torch.int64) * steps
        # Clamp into [1, T]: engines must never index outside the tensor (onnxruntime#24920).
        lens = torch.clamp(lengths.to(torch.int64), min=1)
        lens = torch.minimum(lens, torch.ones_like(lens) * steps).to(torch.int32)
        seq_lens = None if full else lens
        init_states = None if hx is None else (list(hx) if isinstance(hx, tuple) else [hx])
        finals: list[list[Tensor]] = []
        for layer in range(self.num_layers):
            lo, hi = layer * self.num_directions, (layer + 1) * self.num_directions
            init: list[Tensor | None] = (
                [None] * (2 if self.cell == "lstm" else 1)
                if init_states is None
                else [s[lo:hi] for s in init_states]
            )
            name = f"{self.onnx_name}/l{layer}"
            if self.bidirectional and self.onnx_layout == "fused":
                y, last = self._onnx_node(xt, layer, (0, 1), seq_lens, init, "bidirectional", name)
                xt = y.permute(0, 2, 1, 3).reshape(steps, batch, 2 * self.output_size)
            else:
                y, last = self._onnx_node(
                    xt,
                    layer,
                    (0,),
                    seq_lens,
                    [s if s is None else s[:1] for s in init],
                    "forward",
                    f"{name}/forward" if self.bidirectional else name,
                )
                outs = [y.squeeze(1)]
                if self.bidirectional:
                    # Reversed in the dtype the node computes in (float32 for a ragged float16
                    # graph): TensorRT-RTX's builder failed on a float16 reversal between the
                    # Casts of a BiLSTM-CRF tagger (Myelin "CHECK_GE(crds.size(), ...)").
                    compute = recurrent_dtype(xt.dtype, ragged=seq_lens is not None)
                    rev = _reverse_sequence(xt.to(compute), lens)
                    yb, last_b = self._onnx_node(
                        rev,
                        layer,
                        (1,),
                        seq_lens,
                        [s if s is None else s[1:] for s in init],
                        "forward",
                        f"{name}/backward",
                    )
                    outs.append(_reverse_sequence(yb.squeeze(1), lens).to(xt.dtype))
                    last = [
                        torch.cat([f, b.to(f.dtype)], 0) for f, b in zip(last, last_b, strict=True)
                    ]
                xt = torch.cat(outs, -1) if len(outs) > 1 else outs[0]
            finals.append(last)
        if not full and self.padding_value != 0.0:
            # The recurrent nodes themselves write 0 past each row's length (ONNX Runtime's
            # kernels and TensorRT's importer alike; verification checks it), and
            # ReverseSequence leaves those positions in place: only another padding value needs
            # a mask (a Where that took 6-8% of a BiLSTM(256)'s time at batch 8).
            mask = padding_mask(lens, steps, batch_first=False).unsqueeze(-1)
            xt = torch.where(mask, xt, torch.full_like(xt, self.padding_value))
        out = xt.transpose(0, 1) if self.batch_first else xt
        states = [torch.cat([f[i] for f in finals], 0) for i in range(len(finals[0]))]
        return out, self._pack_states(states)


#: Suffixes of the buffers :func:`onnx_weight_constants` registers: W, R, B and an LSTMP's P.
_WEIGHT_PARTS = ("_w", "_r", "_b", "_p")


def _weights_key(layer: int, directions: Sequence[int], dtype: torch.dtype) -> str:
    dirs = "".join(str(d) for d in directions)
    return f"_onnx_l{layer}_d{dirs}_{str(dtype).removeprefix('torch.')}"


@contextlib.contextmanager
def onnx_weight_constants(model: nn.Module) -> Iterator[None]:
    """For one export, give every :class:`BiRNN` in ``model`` its nodes' weights as buffers,
    already stacked per node and in ONNX gate order.

    Reordered inside the trace, the weights would reach the graph as ``Slice`` / ``Concat`` nodes
    on the parameters, which the exporter's constant folding leaves in place above its size
    limit (a 3-layer BiLSTM(256) kept 48 Slice and 15 Concat nodes, re-run at every session
    start). Buffers become initializers as they are, at any size. Both dtypes a node may
    compute in are registered (see :func:`recurrent_dtype`); the exporter drops unused ones.
    """
    added: list[tuple[BiRNN, str]] = []
    try:
        for module in model.modules():
            if not isinstance(module, BiRNN):
                continue
            dtype = module.weight_ih_l0.dtype
            dtypes = dict.fromkeys([dtype, recurrent_dtype(dtype, ragged=True)])
            groups = [(0, 1), (0,), (1,)] if module.bidirectional else [(0,)]
            with torch.no_grad():
                for layer in range(module.num_layers):
                    weights = module.onnx_weights(layer)
                    for directions in groups:
                        for compute in dtypes:
                            key = _weights_key(layer, directions, compute)
                            for suffix, parts in zip(_WEIGHT_PARTS, weights, strict=False):
                                value = torch.stack([parts[d] for d in directions]).to(compute)
                                module.register_buffer(key + suffix, value, persistent=False)
                                added.append((module, key + suffix))
        yield
    finally:
        for module, name in added:
            delattr(module, name)


def recurrent_dtype(dtype: torch.dtype, *, ragged: bool) -> torch.dtype:
    """The dtype an exported recurrent node computes in, for a graph of ``dtype``.

    float16 nodes that take ``sequence_lens`` (``ragged``) compute in float32, between Casts:
    TensorRT's ONNX parser (onnx-tensorrt's RNN importer, shared by TensorRT 10/11 and
    TensorRT-RTX) masks the steps past each length with a float32 zero, which a strongly typed
    network cannot select against half data, so it rejects every such fp16 node ("ISelectLayer
    must have `thenInput` and `elseInput` of same types"). ONNX Runtime's CPU provider has no
    fp16 recurrent kernels and casts to float32 around them anyway. Nodes without
    ``sequence_lens`` keep the graph's dtype.

    Example:
        >>> recurrent_dtype(torch.float16, ragged=True)
        torch.float32
        >>> recurrent_dtype(torch.float16, ragged=False)
        torch.float16
    """
    return torch.float32 if dtype == torch.float16 and ragged else dtype


def _reverse_sequence(x: Tensor, lens: Tensor) -> Tensor:
    """ONNX ``ReverseSequence`` on a time-major tensor (exported as the node itself)."""
    return torch.onnx.ops.symbolic(
        "ReverseSequence",
        [x, lens.to(torch.int64)],
        {"batch_axis": 1, "time_axis": 0},
        dtype=x.dtype,
        shape=x.shape,
        version=10,
    )


def _is_tracing() -> bool:
    return torch.onnx.is_in_onnx_export() or torch.jit.is_tracing() or torch.compiler.is_compiling()


def _cell_of(layer: nn.Module) -> Cell:
    if isinstance(layer, nn.LSTM):
        return "lstm"
    if isinstance(layer, nn.GRU):
        return "gru"
    if isinstance(layer, nn.RNN):
        return "rnn_relu" if layer.nonlinearity == "relu" else "rnn_tanh"
    raise ValueError(f"layer: expected nn.RNN, nn.LSTM or nn.GRU, got {type(layer).__name__}")


def state_names(cell: str) -> Sequence[str]:
    """Names of the final-state outputs a layer returns: ``h_n`` (and ``c_n`` for LSTM)."""
    return ("h_n", "c_n") if cell == "lstm" else ("h_n",)
