"""CRF Viterbi decoding that exports: :class:`CRFDecoder` and its ONNX ``Scan`` form.

A BiLSTM-CRF tagger ends in ``crf.decode(emissions, mask)`` (``pytorch-crf``, import name
``torchcrf``): a Python loop over time that returns ragged lists, which no exporter gets out.
:class:`CRFDecoder` holds the same three parameters (``start_transitions``,
``end_transitions``, ``transitions``; its ``state_dict`` is ``torchcrf.CRF``'s) and decodes
with the same operations in the same order, so its tags equal ``torchcrf``'s exactly, ties
included (both take the first maximal tag). It returns a tensor instead of lists:

- ``tags``: int64 ``[batch, seq]``, row ``b`` holds ``torchcrf``'s list for ``b`` in its first
  ``mask[b].sum()`` positions and :data:`~birnn_export.spec.TAG_PADDING` (-1) after them;
- ``decode(..., with_score=True)`` also returns the best path's score ``[batch]``.

Export: while tracing, :meth:`CRFDecoder.decode` emits one placeholder node
(``birnn_export::ViterbiDecode``) and :func:`expand_viterbi` replaces it by two ONNX ``Scan``
nodes over the time axis: the max-product recursion (carrying the score, scanning out the
back-pointers) and the backtrace (walking the back-pointers from each row's last valid step).
Viterbi is sequential in time and ONNX has no op for it, so a loop is its natural form, unlike
the recurrent layers; nothing is unrolled, the graph takes any batch and length. ``Scan`` was
measured against ``Loop`` (the same bodies, ``scripts/bench_crf.py``): ONNX Runtime ran the
decode 25% faster as ``Scan``, which slices its inputs per step where ``Loop`` needs ``Gather``
nodes; TensorRT imports both.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import os
import sys
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from birnn_export.errors import ConversionError
from birnn_export.modules import NODE_NAME_KEY
from birnn_export.spec import TAG_PADDING

logger = logging.getLogger(__name__)

#: Domain and name of the placeholder node :func:`expand_viterbi` replaces.
VITERBI_DOMAIN = "birnn_export"
VITERBI_OP = "ViterbiDecode"


class CRFDecoder(nn.Module):
    """Linear-chain CRF decoding (Viterbi) that traces to ONNX at dynamic batch and length.

    Args:
        num_tags: Number of tags.
        batch_first: Emissions ``[batch, seq, tags]`` (else ``[seq, batch, tags]``), as in
            ``torchcrf.CRF``. The returned tags are ``[batch, seq]`` either way.

    Example:
        >>> decoder = CRFDecoder(5, batch_first=True)  # or CRFDecoder.from_torchcrf(crf)
        >>> decoder.decode(torch.randn(2, 7, 5), torch.ones(2, 7, dtype=torch.bool)).shape
        torch.Size([2, 7])
    """

    def __init__(self, num_tags: int, *, batch_first: bool = False) -> None:
        if num_tags <= 0:
            raise ValueError(f"num_tags: expected a positive number, got {num_tags}")
        super().__init__()
        self.num_tags = num_tags
        self.batch_first = batch_first
        self.start_transitions = nn.Parameter(torch.zeros(num_tags))
        self.end_transitions = nn.Parameter(torch.zeros(num_tags))
        self.transitions = nn.Parameter(torch.zeros(num_tags, num_tags))
        #: Set by conversion: the module path, which names the graph's Scan nodes.
        self.path = "crf"

    @classmethod
    def from_parameters(
        cls,
        start_transitions: Tensor,
        end_transitions: Tensor,
        transitions: Tensor,
        *,
        batch_first: bool = False,
    ) -> CRFDecoder:
        """A decoder over given scores: the hook for a hand-written CRF.

        ``transitions[i, j]`` scores tag ``i`` followed by tag ``j`` (``torchcrf``'s
        convention; transpose a ``[to, from]`` matrix first). Replace the hand-written decode
        with this decoder's :meth:`decode` before export.
        """
        num_tags = int(transitions.shape[0])
        shapes = (tuple(start_transitions.shape), tuple(end_transitions.shape))
        if tuple(transitions.shape) != (num_tags, num_tags) or shapes != ((num_tags,),) * 2:
            raise ConversionError(
                f"CRF parameters: expected start/end [{num_tags}] and transitions "
                f"[{num_tags}, {num_tags}], got {list(start_transitions.shape)}, "
                f"{list(end_transitions.shape)} and {list(transitions.shape)}"
            )
        decoder = cls(num_tags, batch_first=batch_first)
        with torch.no_grad():
            decoder.start_transitions.copy_(start_transitions)
            decoder.end_transitions.copy_(end_transitions)
            decoder.transitions.copy_(transitions)
        # .to() swaps the parameters, which a trace refuses (made in forward, as the hint says)
        return decoder if transitions.dtype == torch.float32 else decoder.to(transitions.dtype)

    @classmethod
    def from_torchcrf(cls, crf: nn.Module) -> CRFDecoder:
        """The decoder equal to a ``torchcrf.CRF`` (same parameters, same ``batch_first``)."""
        decoder = cls.from_parameters(
            crf.start_transitions.detach(),
            crf.end_transitions.detach(),
            crf.transitions.detach(),
            batch_first=crf.batch_first,
        )
        return decoder.train(crf.training)

    def extra_repr(self) -> str:
        return f"num_tags={self.num_tags}, batch_first={self.batch_first}"

    def forward(self, *args: Any, **kwargs: Any) -> Tensor:
        raise ConversionError(
            "CRFDecoder only decodes: call crf.decode(emissions, mask) in the model's forward "
            "(the CRF's forward is torchcrf's training loss, which is not exported)"
        )

    def decode(
        self, emissions: Tensor, mask: Tensor | None = None, *, with_score: bool = False
    ) -> Tensor | tuple[Tensor, Tensor]:
        """Best tag sequence per row: int64 ``[batch, seq]``, :data:`TAG_PADDING` past each
        row's ``mask.sum()`` (and the best path's score ``[batch]`` when ``with_score``).

        ``mask`` (bool ``[batch, seq]``, or ``[seq, batch]`` when not ``batch_first``) marks
        valid steps; as in ``torchcrf`` the first step must be valid, masked steps keep the
        score, and a row's tags are its first ``mask.sum()`` positions.
        """
        if emissions.dim() != 3 or emissions.shape[2] != self.num_tags:
            raise ValueError(
                f"emissions: expected [batch, seq, {self.num_tags}] (or time-major), got "
                f"{list(emissions.shape)}"
            )
        if not self.batch_first:
            emissions = emissions.transpose(0, 1)
            mask = None if mask is None else mask.transpose(0, 1)
        if mask is None:
            mask = torch.ones_like(emissions[:, :, 0], dtype=torch.bool)
        mask = mask.to(torch.bool)
        if torch.onnx.is_in_onnx_export():
            tags, score = self._placeholder(emissions, mask)
        else:
            tags, score = _viterbi(
                emissions, mask, self.start_transitions, self.end_transitions, self.transitions
            )
            _record(self, emissions, mask, tags)
        return (tags, score) if with_score else tags

    def _placeholder(self, emissions: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        batch, steps = emissions.shape[0], emissions.shape[1]
        tags, score = torch.onnx.ops.symbolic_multi_out(
            f"{VITERBI_DOMAIN}::{VITERBI_OP}",
            [emissions, mask, self.start_transitions, self.end_transitions, self.transitions],
            {},
            dtypes=[torch.int64, emissions.dtype],
            shapes=[[batch, steps], [batch]],
            version=1,
            metadata_props={NODE_NAME_KEY: self.path},
        )
        return tags, score


def _viterbi(
    emissions: Tensor, mask: Tensor, start: Tensor, end: Tensor, transitions: Tensor
) -> tuple[Tensor, Tensor]:
    """Batch-first Viterbi with ``torchcrf``'s operations in its order (so equal floats)."""
    batch, steps, _ = emissions.shape
    score = start + emissions[:, 0]
    history = []
    for i in range(1, steps):
        next_score = score.unsqueeze(2) + transitions + emissions[:, i].unsqueeze(1)
        next_score, indices = next_score.max(dim=1)
        score = torch.where(mask[:, i].unsqueeze(1), next_score, score)
        history.append(indices)
    score = score + end
    best_score, last = score.max(dim=1)
    lengths = mask.long().sum(dim=1)
    tags = torch.full((batch, steps), TAG_PADDING, dtype=torch.int64, device=emissions.device)
    rows = torch.arange(batch, device=emissions.device)
    current = last
    for p in range(steps - 1, -1, -1):
        at_end = lengths - 1 == p
        inside = p < lengths
        tag = torch.where(at_end, last, current)
        tags[:, p] = torch.where(inside, tag, TAG_PADDING)
        if p > 0:
            current = history[p - 1][rows, torch.where(inside, tag, 0)]
    return tags, best_score


# -- best-path scores, for verification ----------------------------------------------------

#: The decodes :func:`recorded_decodes` is recording in this context (``None``: none).
_RECORDING: contextvars.ContextVar[list[tuple[np.ndarray, np.ndarray]] | None] = (
    contextvars.ContextVar("birnn_export_crf_decodes", default=None)
)


def path_scores(
    emissions: np.ndarray,
    tags: np.ndarray,
    lengths: np.ndarray,
    start: np.ndarray,
    end: np.ndarray,
    transitions: np.ndarray,
) -> np.ndarray:
    """The score of each row's tag path ``[batch]``: ``start`` and the emission of its first
    tag, then per step inside the row the transition and the emission, plus ``end`` of its last
    tag, summed in torchcrf's order, ``(score + transition) + emission``, in ``emissions``'
    dtype.

    ``emissions`` ``[batch, seq, tags]``, ``tags`` ``[batch, seq]`` (a row's path in its first
    ``lengths[b]`` positions; what follows is ignored; a row of length 0 scores tag 0's first
    step, a number of no meaning).

    Example:
        >>> e = np.array([[[1.0, 0.0], [0.0, 2.0]]])
        >>> t = np.array([[0.0, 0.5], [0.25, 0.0]])
        >>> path_scores(e, np.array([[0, 1]]), np.array([2]), np.zeros(2), np.ones(2), t)
        array([4.5])
    """
    batch, steps = tags.shape[0], tags.shape[1]
    dtype = emissions.dtype
    start, end, transitions = (np.asarray(a, dtype) for a in (start, end, transitions))
    rows = np.arange(batch)
    previous = np.clip(tags[:, 0] if steps else np.zeros(batch, np.int64), 0, None)
    score = start[previous] + (emissions[rows, 0, previous] if steps else 0)
    for step in range(1, steps):
        inside = step < lengths
        tag = np.where(inside, tags[:, step], previous)
        moved = (score + transitions[previous, tag]) + emissions[rows, step, tag]
        score = np.where(inside, moved, score)
        previous = tag
    return (score + end[previous]).astype(dtype)


def _record(crf: nn.Module, emissions: Tensor, mask: Tensor, tags: Tensor) -> None:
    """Add one decode's best-path scores to the decodes being recorded, if any (batch-first
    ``emissions`` and ``mask``, the decode's ``tags`` ``[batch, seq]``), summed in float32 at
    least, as the graph's Viterbi sums a float16 graph's. A row whose mask has holes (torchcrf
    takes them: masked steps keep the score) is recorded with length 0, not compared: its path
    is not its first ``mask.sum()`` steps. Never in a graph ``torch.compile`` traces (a
    compiled reference), and never failing the model's run: a decode it cannot score is left
    out, and the count of decodes then says the scores were not compared."""
    records = _RECORDING.get()
    if records is None or torch.compiler.is_compiling():
        return
    try:
        mask = mask.detach().cpu().numpy().astype(bool)
        lengths = mask.sum(axis=1)
        values = emissions.detach().cpu().numpy()
        scores = path_scores(
            values.astype(np.promote_types(values.dtype, np.float32)),
            tags.detach().cpu().numpy(),
            lengths,
            *(crf.get_parameter(n).detach().cpu().numpy() for n in _CRF_PARAMETERS),
        )
        prefix = (mask == (np.arange(mask.shape[1])[None, :] < lengths[:, None])).all(axis=1)
    except Exception:  # the score is verification's, never the model's failure
        return
    records.append((scores, np.where(prefix, lengths, 0)))


_CRF_PARAMETERS = ("start_transitions", "end_transitions", "transitions")


@contextlib.contextmanager
def recorded_decodes(model: nn.Module) -> Iterator[list[tuple[np.ndarray, np.ndarray]]]:
    """Every CRF decode ``model`` runs inside the block, in order, as ``(scores, lengths)``:
    the best-path score of each row (:func:`path_scores` of the path the decode chose, on the
    emissions it was given) and each row's length (0 for a mask with holes: not compared).
    Records every :class:`CRFDecoder` decode in this thread (those made in ``forward`` too),
    and the decodes of ``model``'s ``torchcrf.CRF`` modules."""
    records: list[tuple[np.ndarray, np.ndarray]] = []
    wrapped = [m for m in model.modules() if is_torchcrf(m) and "decode" not in vars(m)]
    for module in wrapped:
        vars(module)["decode"] = _recording_torchcrf(module)
    token = _RECORDING.set(records)
    try:
        yield records
    finally:
        _RECORDING.reset(token)
        for module in wrapped:
            vars(module).pop("decode", None)


def _recording_torchcrf(crf: nn.Module) -> Callable[..., Any]:
    decode = type(crf).decode.__get__(crf)

    def recording(emissions: Tensor, mask: Tensor | None = None, *args: Any, **kwargs: Any) -> Any:
        result = decode(emissions, mask, *args, **kwargs)
        if is_tag_lists(result) and isinstance(emissions, Tensor) and emissions.dim() == 3:
            if not crf.batch_first:
                emissions = emissions.transpose(0, 1)
                mask = None if mask is None else mask.transpose(0, 1)
            if mask is None:
                mask = torch.ones(emissions.shape[:2], dtype=torch.bool)
            _record(crf, emissions, mask, ragged_to_padded(result, emissions.shape[1]))
        return result

    return recording


def to_torchcrf(decoder: CRFDecoder) -> nn.Module:
    """A ``torchcrf.CRF`` with ``decoder``'s parameters (the reference to verify against), or
    a copy of ``decoder`` where pytorch-crf is not installed (its decode is held equal to
    ``torchcrf``'s by the tests)."""
    import copy

    try:
        import torchcrf
    except ImportError:
        logger.warning(
            "pytorch-crf is not installed: CRF decodes are verified against birnn-export's "
            "eager Viterbi; pip install pytorch-crf to verify against torchcrf itself"
        )
        return copy.deepcopy(decoder)
    crf = torchcrf.CRF(decoder.num_tags, batch_first=decoder.batch_first)
    crf.load_state_dict(decoder.state_dict())
    return crf.to(decoder.transitions.dtype).train(decoder.training)


def ragged_to_padded(rows: list[list[int]], steps: int | None = None) -> Tensor:
    """``torchcrf``'s lists as :class:`CRFDecoder`'s tensor: ``[batch, steps]`` int64,
    :data:`TAG_PADDING` after each list (``steps`` defaults to the longest list)."""
    width = max((len(r) for r in rows), default=0) if steps is None else steps
    out = torch.full((len(rows), width), TAG_PADDING, dtype=torch.int64)
    for b, row in enumerate(rows):
        out[b, : len(row)] = torch.as_tensor(row, dtype=torch.int64)
    return out


def is_tag_lists(value: Any) -> bool:
    """Whether ``value`` is what ``torchcrf.CRF.decode`` returns: a list of lists of ints
    (an empty list for an empty batch)."""
    return isinstance(value, list) and all(
        isinstance(row, list) and all(type(tag) is int for tag in row) for row in value
    )


def flatten_returned(value: Any) -> list[Any]:
    """What a model returned, as the graph's outputs in order: tuples, lists and dicts (in
    their keys' order, as the exporter flattens them) opened, ``torchcrf``'s tag lists as
    one padded tensor, and ``None`` left out (the exporter writes no output for it: ESPnet's
    ``[None, states]``)."""
    if is_tag_lists(value):
        return [ragged_to_padded(value)]
    if isinstance(value, dict):
        value = list(value.values())
    if isinstance(value, (tuple, list)):
        return [leaf for item in value for leaf in flatten_returned(item)]
    return [] if value is None else [value]


def is_torchcrf(module: nn.Module) -> bool:
    """Whether ``module`` is a ``torchcrf.CRF`` (checked without importing torchcrf)."""
    kind = type(module)
    return kind.__name__ == "CRF" and kind.__module__.split(".")[0] == "torchcrf"


def hand_written_crfs(model: nn.Module) -> list[str]:
    """Paths of modules that look like a CRF of their own: a square ``transitions``
    parameter, not a ``torchcrf.CRF`` nor a :class:`CRFDecoder`."""
    found = []
    for path, module in model.named_modules():
        if is_torchcrf(module) or isinstance(module, CRFDecoder):
            continue
        trans = module._parameters.get("transitions")
        if trans is not None and trans.dim() == 2 and trans.shape[0] == trans.shape[1]:
            found.append(path or "<root>")
    return found


def crfs_that_run(model: nn.Module, run: Callable[[], Any]) -> list[str]:
    """Of :func:`hand_written_crfs`, those whose own code runs in ``run()`` (the model's
    ``forward`` on its example), every one where a function named ``*viterbi*`` of the
    model's runs: an AllenNLP tagger keeps its CRF as a module and decodes outside
    ``forward``, and a failure to export it is not the CRF's. A ``run`` that fails, or one
    under a profiler, counts every CRF (as before this looked)."""
    found = hand_written_crfs(model)
    if not found or sys.getprofile() is not None:
        return found  # under a profiler (cProfile cannot be set back): each may be the cause
    modules = dict(model.named_modules())
    codes: dict[Any, str] = {}
    for path in found:
        for klass in type(modules.get(path, model) if path != "<root>" else model).__mro__:
            if klass.__module__.startswith("torch."):
                continue
            for value in vars(klass).values():
                code = getattr(value, "__code__", None)
                if code is not None:
                    codes[code] = path
    ran: set[str] = set()

    ours = os.path.dirname(os.path.abspath(__file__))

    def profile(frame: Any, event: str, _arg: Any) -> None:
        if event != "call":
            return
        if frame.f_code in codes:
            ran.add(codes[frame.f_code])
        elif "viterbi" in frame.f_code.co_name.lower() and not frame.f_code.co_filename.startswith(
            ours
        ):  # a decode of its own reading the CRF's parameters (allennlp's viterbi_decode)
            ran.update(found)

    sys.setprofile(profile)
    try:
        run()
    except Exception:  # the model's own failure: its CRFs may be why
        return found
    finally:
        sys.setprofile(None)
    return [path for path in found if path in ran]


HAND_WRITTEN_HINT = (
    "a hand-written CRF's Viterbi loop cannot be exported; decode with "
    "birnn_export.CRFDecoder.from_parameters(start, end, transitions) in forward instead "
    "(transitions[i, j] scores tag i followed by j: the PyTorch tutorial's [to, from] matrix T "
    "with START and STOP tags gives from_parameters(T[:n, START], T[STOP, :n], T[:n, :n].t()) "
    "for its n other tags; README, 'CRF taggers')"
)


# -- the ONNX form ---------------------------------------------------------------------------


def viterbi_score_tensors(proto: Any) -> list[tuple[str, str]]:
    """``(path, tensor)`` of each decode in ``proto`` (in node order): the CRF's module path
    and the tensor holding its best path's score ``[batch, 1]`` (the ``TopK`` over the last
    step's scores plus ``end_transitions``, named by :func:`expand_viterbi`)."""
    suffix = "/viterbi/last_top"
    return [
        (node.name[: -len(suffix)], str(node.output[0]))
        for node in proto.graph.node
        if node.op_type == "TopK" and node.name.endswith(suffix) and node.output
    ]


def expand_viterbi(proto: Any) -> list[str]:
    """Replace each ``ViterbiDecode`` placeholder in ``proto`` by its two ``Scan`` nodes (in
    place); drop the placeholder's opset import. Returns the names of the tags they output."""
    graph = proto.graph
    types = {
        v.name: v.type.tensor_type.elem_type
        for v in [*graph.value_info, *graph.input, *graph.output]
    }
    nodes: list[Any] = []
    tags: list[str] = []
    for node in graph.node:
        if node.domain == VITERBI_DOMAIN and node.op_type == VITERBI_OP:
            props = {p.key: p.value for p in node.metadata_props}
            path = props.get(NODE_NAME_KEY, f"crf{len(tags)}")
            score_type = types.get(node.input[0]) or types.get(node.output[1]) or 1
            nodes += list(_viterbi_nodes(node, path, score_type))
            tags.append(node.output[0])
        else:
            nodes.append(node)
    if tags:
        del graph.node[:]
        graph.node.extend(nodes)
        kept = [o for o in proto.opset_import if o.domain != VITERBI_DOMAIN]
        del proto.opset_import[:]
        proto.opset_import.extend(kept)
    return tags


def _viterbi_nodes(node: Any, path: str, score_type: int) -> Iterator[Any]:
    """The nodes of one decode. Everything that does not depend on the previous step is
    computed outside the loops and scanned in per step, so each iteration runs few nodes (ONNX
    Runtime's cost per iteration grows with them; this form and the Scans took the decode from
    1.06 to 0.62 ms at batch 1, 100 steps): the recursion's body is 2 Adds, a TopK, a Transpose
    and a Where; the backtrace's 3 Wheres and a GatherElements.

    Recursion, in the layout ``[batch, to, from]``: ``next[b, j, i] = (score[b, i] +
    transitions[i, j]) + emissions[b, t, j]``, torchcrf's sums in its order; the best ``i``
    (first on ties) is the back-pointer ``history[t, b, j]`` (row 0 unused, torchcrf's
    ``history[t - 1]``). The backtrace walks the steps from last to first and writes the
    reversed tags, which are flipped at the end.
    """
    from onnx import TensorProto, helper

    emissions, mask, start, end, trans = node.input
    tags_out, score_out = node.output
    p = f"{path}/viterbi"

    def name(part: str) -> str:
        return f"{p}/{part}"

    def const(part: str, value: Any, dtype: int = TensorProto.INT64) -> Any:
        dims = [] if not isinstance(value, list) else [len(value)]
        values = value if isinstance(value, list) else [value]
        return helper.make_node(
            "Constant",
            [],
            [name(part)],
            name=name(part),
            value=helper.make_tensor(name(part), dtype, dims, values),
        )

    def op(kind: str, inputs: list[str], part: str, **attrs: Any) -> Any:
        return helper.make_node(kind, inputs, [name(part)], name=name(part), **attrs)

    def reverse(source: str, part: str) -> Any:  # along axis 0
        args = [
            source,
            name("minus_one_1d"),
            name("int64_min"),
            name("axis0"),
            name("minus_one_1d"),
        ]
        return op("Slice", args, part)

    if score_type == TensorProto.FLOAT16:  # the running scores in float32, cast back at the end
        # float16 scores reach tens of thousands over long rows, where its steps are coarser
        # than a step's emissions: 94.6% of a trained tagger's tags at 2000 steps (users25)
        float_inputs = {"emissions": emissions, "start": start, "end": end, "transitions": trans}
        for part, source in float_inputs.items():
            yield op("Cast", [source], f"{part}_float32", to=TensorProto.FLOAT)
        emissions, start, end, trans = (name(f"{part}_float32") for part in float_inputs)
        half_score, score_out = score_out, score_out and name("score_float32")
        score_type = TensorProto.FLOAT
    else:
        half_score = ""
    for part, value in (
        ("zero", 0),
        ("one", 1),
        ("minus_one", TAG_PADDING),
        ("axis0", [0]),
        ("axis1", [1]),
        ("axis2", [2]),
        ("axis3", [3]),
        ("axes23", [2, 3]),
        ("one_1d", [1]),
        ("minus_one_1d", [-1]),
        ("int64_min", [-(2**63)]),
    ):
        yield const(part, value)
    # Per step, precomputed: emissions as [T, B, K, 1], and whether step t updates the score
    # (t > 0 and mask[b, t]) as [T, B, 1, 1].
    yield op("Transpose", [emissions], "emissions_tm", perm=[1, 0, 2])
    yield op("Unsqueeze", [name("emissions_tm"), name("axis3")], "emissions_col")
    yield op("Shape", [name("emissions_tm")], "steps_1d", start=0, end=1)
    yield op("Squeeze", [name("steps_1d"), name("axis0")], "steps")
    yield op("Range", [name("zero"), name("steps"), name("one")], "positions")
    yield op("Greater", [name("positions"), name("zero")], "after_first")
    yield op("Unsqueeze", [name("after_first"), name("axis1")], "after_first_col")
    yield op("Transpose", [mask], "mask_tm", perm=[1, 0])
    yield op("And", [name("mask_tm"), name("after_first_col")], "updates")
    yield op("Unsqueeze", [name("updates"), name("axes23")], "updates_4d")
    yield op("Transpose", [trans], "transitions_to_from", perm=[1, 0])
    yield op("Gather", [name("emissions_tm"), name("zero")], "emissions_0", axis=0)
    yield op("Add", [start, name("emissions_0")], "score_0")
    yield op("Unsqueeze", [name("score_0"), name("axis1")], "score_0_row")

    forward = helper.make_graph(
        [
            op("Add", [name("f_score"), name("transitions_to_from")], "f_with_trans"),
            op("Add", [name("f_with_trans"), name("f_emit")], "f_next"),
            # TopK, not ReduceMax + ArgMax: the same values and first maximal index (ONNX's
            # tie rule), and TensorRT-RTX compiles it in 1 s where the pair took 34 s at 4 tags.
            helper.make_node(
                "TopK",
                [name("f_next"), name("one_1d")],
                [name("f_best_col"), name("f_indices")],
                name=name("f_top"),
                axis=2,
            ),
            op("Transpose", [name("f_best_col")], "f_best", perm=[0, 2, 1]),
            op("Where", [name("f_update"), name("f_best"), name("f_score")], "f_score_out"),
        ],
        name("forward_body"),
        [
            helper.make_tensor_value_info(name("f_score"), score_type, None),
            helper.make_tensor_value_info(name("f_emit"), score_type, None),
            helper.make_tensor_value_info(name("f_update"), TensorProto.BOOL, None),
        ],
        [
            helper.make_tensor_value_info(name("f_score_out"), score_type, None),
            helper.make_tensor_value_info(name("f_indices"), TensorProto.INT64, None),
        ],
    )
    yield helper.make_node(
        "Scan",
        [name("score_0_row"), name("emissions_col"), name("updates_4d")],
        [name("score_last_row"), name("history_col")],
        name=f"{p}/forward",
        body=forward,
        num_scan_inputs=2,
    )
    yield op("Squeeze", [name("score_last_row"), name("axis1")], "score_last")
    yield op("Add", [name("score_last"), end], "score_end")
    yield helper.make_node(
        "TopK",
        [name("score_end"), name("one_1d")],
        [name("best_score_col"), name("last_tag")],
        name=name("last_top"),
        axis=1,
    )
    if score_out:
        yield helper.make_node(
            "Squeeze", [name("best_score_col"), name("axis1")], [score_out], name=name("best_score")
        )
    if half_score:
        yield helper.make_node(
            "Cast", [score_out], [half_score], name=name("score_float16"), to=TensorProto.FLOAT16
        )
    # Backtrace, step T-1 first: per step and row, whether it is the row's last valid step and
    # whether it is inside the row ([T, B, 1], reversed), and the back-pointers reversed.
    yield op("Squeeze", [name("history_col"), name("axis3")], "history")
    yield reverse(name("history"), "history_reversed")
    yield op("Cast", [mask], "mask_int", to=TensorProto.INT64)
    yield op("ReduceSum", [name("mask_int"), name("axis1")], "lengths", keepdims=0)
    yield op("Sub", [name("lengths"), name("one")], "last_step")
    yield reverse(name("positions"), "positions_reversed")
    yield op("Unsqueeze", [name("positions_reversed"), name("axis1")], "positions_col")
    yield op("Equal", [name("positions_col"), name("last_step")], "at_end")
    yield op("Less", [name("positions_col"), name("lengths")], "inside")
    yield op("Unsqueeze", [name("at_end"), name("axis2")], "at_end_3d")
    yield op("Unsqueeze", [name("inside"), name("axis2")], "inside_3d")
    yield op("Mul", [name("last_tag"), name("zero")], "no_tags")

    backtrace = helper.make_graph(
        [
            op("Where", [name("b_at_end"), name("last_tag"), name("b_next")], "b_tag_any"),
            op("Where", [name("b_inside"), name("b_tag_any"), name("minus_one")], "b_tag"),
            op("Where", [name("b_inside"), name("b_tag_any"), name("zero")], "b_safe"),
            op("GatherElements", [name("b_pointers"), name("b_safe")], "b_prev", axis=1),
        ],
        name("backtrace_body"),
        [
            helper.make_tensor_value_info(name("b_next"), TensorProto.INT64, None),
            helper.make_tensor_value_info(name("b_at_end"), TensorProto.BOOL, None),
            helper.make_tensor_value_info(name("b_inside"), TensorProto.BOOL, None),
            helper.make_tensor_value_info(name("b_pointers"), TensorProto.INT64, None),
        ],
        [
            helper.make_tensor_value_info(name("b_prev"), TensorProto.INT64, None),
            helper.make_tensor_value_info(name("b_tag"), TensorProto.INT64, None),
        ],
    )
    yield helper.make_node(
        "Scan",
        [name("no_tags"), name("at_end_3d"), name("inside_3d"), name("history_reversed")],
        [name("backtrace_unused"), name("tags_reversed")],
        name=f"{p}/backtrace",
        body=backtrace,
        num_scan_inputs=3,
    )
    yield reverse(name("tags_reversed"), "tags_tm_col")
    yield op("Squeeze", [name("tags_tm_col"), name("axis2")], "tags_tm")
    yield helper.make_node(
        "Transpose", [name("tags_tm")], [tags_out], name=name("tags"), perm=[1, 0]
    )
