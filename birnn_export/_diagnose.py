"""Why a verification failed: the direction-split diagnosis.

:func:`diagnose_directions` splits a bidirectional layer's output into its forward and backward
halves and says which one diverges, from which step, and whether that is a reversal bug.
:func:`diagnose_layers` does the same for models with a head: a model's final output has passed
through later layers, so its halves are not the two directions; instead it takes the first
recurrent layer whose own output differs (:mod:`birnn_export._layers` reads every layer from the
graph and from the reference), which also locates a defect in a lower layer.

Used by :mod:`birnn_export.verification` on failure only; nothing here runs for a passing graph.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from birnn_export._layers import GraphLayer
from birnn_export._report import AFTER_NODES, AFTER_REVERSAL
from birnn_export.compare import Check, abs_errors, outside_tolerance
from birnn_export.spec import TensorSpec, Tolerance

# -- direction-split diagnosis ---------------------------------------------------------------


def _outside(actual: np.ndarray, expected: np.ndarray, tol: Tolerance) -> np.ndarray:
    """Element-wise: outside ``atol + rtol * |expected|``."""
    return outside_tolerance(actual, expected, tol.atol, tol.rtol)


def _first_bad_steps(bad_bt: np.ndarray, lengths: np.ndarray) -> list[int | None]:
    """Per row, the first valid step with any bad element (``None`` if the row matches)."""
    firsts: list[int | None] = []
    for row, length in enumerate(lengths):
        hits = np.flatnonzero(bad_bt[row, : int(length)])
        firsts.append(int(hits[0]) if hits.size else None)
    return firsts


def _describe_half(
    label: str, firsts: list[int | None], lengths: np.ndarray, max_abs: float
) -> str:
    rows = [r for r, f in enumerate(firsts) if f is not None]
    if not rows:
        return f"{label} half matches (max abs {max_abs:.3g})"
    shown = ", ".join(f"row {r} (len {int(lengths[r])}): t={firsts[r]}" for r in rows[:8])
    more = f", ... {len(rows) - 8} more" if len(rows) > 8 else ""
    return (
        f"{label} half differs (max abs {max_abs:.3g}) in {len(rows)}/{len(firsts)} rows; "
        f"first diverging step: {shown}{more}"
    )


def diagnose_directions(
    tensor: TensorSpec,
    actual: np.ndarray,
    expected: np.ndarray,
    lengths: np.ndarray,
    hidden: int | None,
    tol: Tolerance,
    *,
    steps: int | None = None,
    sequence_ok: bool = True,
) -> str:
    """Explain a mismatch of a bidirectional layer's output by direction.

    For a sequence output ``[..., 2 * hidden]`` the forward half (``[..., :hidden]``) and the
    backward half are compared separately, with the first diverging valid step per row; for a
    final state ``[layers * 2, batch, hidden]`` the even (forward) and odd (backward) entries.
    ``steps`` is the padded length T; ``sequence_ok`` says whether the sequence outputs matched
    in the same case (a state is only blamed on its own when they did).
    """
    if hidden is None:
        return (
            f"{tensor.name}: direction split does not apply: the model is not a bare "
            "bidirectional layer, so this output has passed through later layers (e.g. a head) "
            "and its halves are not the two directions"
        )
    if tensor.role == "state":
        if actual.ndim != 3 or actual.shape[0] % 2 or tensor.batch_axis is None:
            return f"{tensor.name}: direction split does not apply to this state's shape"
        return _diagnose_state(tensor, actual, expected, lengths, tol, steps, sequence_ok)
    t_axis, b_axis = tensor.time_axis, tensor.batch_axis
    if t_axis is None or b_axis is None or actual.shape[-1] != 2 * hidden:
        return (
            f"{tensor.name}: direction split does not apply: last dim {actual.shape[-1]} is not "
            f"2 x hidden_size ({2 * hidden})"
        )
    got = np.moveaxis(actual, (b_axis, t_axis), (0, 1))
    want = np.moveaxis(expected, (b_axis, t_axis), (0, 1))
    batch, steps = got.shape[0], got.shape[1]
    valid = np.arange(steps)[None, :] < lengths[:, None]
    lines, halves = [], []
    for label, sl in (("forward", slice(0, hidden)), ("backward", slice(hidden, None))):
        g, w = got[..., sl], want[..., sl]
        bad_bt = _outside(g, w, tol).reshape(batch, steps, -1).any(-1)
        err = abs_errors(g, w).reshape(batch, steps, -1).max(-1)
        max_abs = float(err[valid].max(initial=0.0))
        firsts = _first_bad_steps(bad_bt & valid, lengths)
        lines.append(_describe_half(label, firsts, lengths, max_abs))
        # each row's last valid step: where a backward pass starts, from its initial state
        ends = [
            bool(bad_bt[r, min(int(n), steps) - 1]) if n > 0 else False
            for r, n in enumerate(lengths)
        ]
        halves.append((label, firsts, max_abs, ends))
    return f"{tensor.name}: " + "; ".join(lines) + " " + _verdict(halves, lengths, steps, tol)


def diagnose_layers(
    checks: Sequence[Check],
    graph: Mapping[str, np.ndarray],
    reference: Mapping[str, np.ndarray],
    lengths: Mapping[str, np.ndarray],
    layers: Sequence[GraphLayer],
    *,
    engine: str,
    hooked: str,
    takes_lengths: bool,
    padding_reaches: bool = False,
    timeless: Sequence[str] = (),
) -> str:
    """Locate a mismatch of a model with later layers (e.g. a head) at its first recurrent layer
    that differs, and split that layer's output into the forward and backward halves as in
    :func:`diagnose_directions`.

    ``checks`` are the layer checks (graph ``Y`` on ONNX Runtime CPU against the reference's
    layers), ``graph`` / ``reference`` the layer outputs by name, ``lengths`` the lengths each
    module's layers saw, ``layers`` the graph's layers in run order. ``padding_reaches``: the
    graph's rows alone differ from the same rows in the batch (its outputs depend on the
    padding). ``timeless``: the failing outputs, where they all lack a time axis and every
    output over time passes.
    """
    by_name = {c.name: c for c in checks}
    source = "ONNX Runtime CPU" + (f", not {engine}," if engine != "ort-cpu" else "")
    where = f"[layer outputs: the graph on {source} vs {hooked}, rerun layer by layer]"
    bad = next((layer for layer in layers if not by_name[layer.name].passed), None)
    if bad is None:
        count = f"{len(layers)} layer(s)"
        drifted = [c.name for c in checks if c.drifted is not None]
        if drifted:  # judged on their input inside the graph: the ops before are suspects too
            its, it = ("its", "it") if len(drifted) == 1 else ("their", "them")
            count += (
                f"; {', '.join(drifted)} on {its} input inside the graph, which the ops before "
                f"{it} moved within the noise: they may be the difference too"
            )
        unbounded = [n for layer in layers for n in layer.without_lengths]
        if takes_lengths and unbounded:  # Y matches at the valid steps; the final state does not
            nodes = ", ".join(repr(n) for n in unbounded)
            return (
                f"every recurrent layer's output matches at the valid steps ({count}), "
                f"but node {nodes} takes no sequence_lens although the graph takes "
                "lengths -> if the model reads its final state (h_n), that is the difference: "
                "it is taken past the padding of every short row; else the difference is after "
                f"the recurrent layers (e.g. the head) {where}"
            )
        also = f", or in {engine} itself" if engine != "ort-cpu" else ""
        unreversed = [n for layer in layers for n in layer.unreversed]
        if unreversed:
            nodes = ", ".join(repr(n) for n in unreversed)
            return (
                f"every recurrent layer matches ({count}), but the Y of "
                f"backward node {nodes} reaches no ReverseSequence -> the reversal of its "
                "output back into time order is the difference (the layer checks reverse the "
                f"node's Y themselves, each row's valid steps) {where}"
            )
        split = any(len(layer.y_names) == 2 for layer in layers)
        crfs = [c.name for c in checks if c.check == "score" and not c.passed]
        if crfs:
            return (
                f"every recurrent layer matches ({count}), but the best path's "
                f"score of CRF {crfs[0]!r} inside the graph differs from the model's -> the "
                "CRF's parameters in the graph (start_transitions, end_transitions, "
                "transitions) or the emissions the layers after the recurrent ones make from "
                "them differ from the model's; decoded tags change only where another path "
                f"overtakes the best one, so they may still agree {where}"
            )
        if timeless:
            names = ", ".join(repr(n) for n in timeless)
            differ = "differs" if len(timeless) == 1 else "differ"
            return (
                f"every recurrent layer matches ({count}), and so does every "
                f"output over time; only {names}, without a time axis, {differ} -> what is made "
                "of the layers after them went wrong: final states gathered at another step "
                "or in another order (torch's h_n is [l0 forward, l0 backward, l1 forward, "
                "...]; a concatenation of the two directions swapped), a pooling, or the layers "
                f"that read them (a head's weights) {where}"
            )
        if padding_reaches:
            lengths_of = (
                ", or a ReverseSequence after a backward node that reverses more than each "
                "row's valid steps"
                if split
                else ""
            )
            return (
                f"every recurrent layer matches ({count}), and the graph's rows "
                "alone differ from the same rows in the batch -> the difference is after the "
                "recurrent nodes, where the padding reaches the valid steps: a mask the model "
                "applies there (attention's key padding mask, a -inf or -1e4 fill before a "
                f"softmax, a masked pooling) that the graph lacks or applies otherwise"
                f"{lengths_of} {where}"
            )
        one_step = all(reference[layer.name].shape[1] <= 1 for layer in layers)
        reversal = (
            f"{AFTER_REVERSAL} (the ReverseSequence after it: the layer checks reverse the "
            "node's Y themselves), or "
            if split and not one_step  # reversing one step changes nothing
            else ""
        )
        return (
            f"every recurrent layer matches ({count}) -> {AFTER_NODES}: "
            f"{reversal}later (e.g. the head{also}) {where}"
        )
    check = by_name[bad.name]
    limit = check.threshold if check.threshold is not None else None
    tol = Tolerance(limit, 0.0) if limit is not None else Tolerance(check.atol, check.rtol)
    rows = np.asarray(lengths[bad.path])
    want = reference[bad.name]
    got = graph[bad.name][:, : want.shape[1]]
    if got.shape != want.shape:
        return (
            f"layer {bad.name}: {check.note} -> the graph computes the layer's input length "
            "another way than the model: a branch on the length the export traced at the "
            "example's, or arithmetic on sizes made Python numbers (math.ceil, int(), max()) "
            f"that the trace froze; compute sizes with tensor ops {where}"
        )
    steps = want.shape[1]
    tensor = TensorSpec(
        f"layer {bad.name}", "float64", ("batch", "seq", bad.directions * bad.hidden), "sequence"
    )
    if bad.directions == 1:
        valid = np.arange(steps)[None, :] < rows[:, None]
        bad_bt = _outside(got, want, tol).any(-1) & valid
        firsts = _first_bad_steps(bad_bt, rows)
        text = f"{tensor.name}: " + _describe_half("its", firsts, rows, check.max_abs)
        text = text.replace("its half", "output")
        return f"{text} -> check this layer's weights, gate order and bias {where}"
    text = diagnose_directions(tensor, got, want, rows, bad.hidden, tol, steps=steps)
    before = layers[layers.index(bad) - 1] if layers.index(bad) else None
    if check.input_departs is not None and before is None:  # its input: users44 F1
        # (after another layer, the text below says what lies between them)
        return text[: text.index("->")] + (
            f"-> the layer's input inside the graph already departs from the model's, up to "
            f"{check.input_departs:.3g} times its limit in a feature: the cause lies in the ops "
            "before it (a convolution, batch norm, embedding or projection: their weights or "
            "constants), not in this layer; not numeric drift, which stays within that limit "
            f"{where}"
        )
    # the input this layer takes (drift there too, where that input departs: users44 F1)
    drift = check.input_departs is not None and "numeric drift" in text
    if before is not None and ("a shared cause" in text or drift):
        split = " (in a split graph: the reversal of its backward node's Y into time order, "
        split += "which the layer checks undo themselves)" if len(before.y_names) == 2 else ""
        if before.unreversed:
            split = f" (its backward node's Y reaches no ReverseSequence: {before.unreversed[0]!r})"
        text = text[: text.index("->")] + (
            f"-> both directions differ, and the layer before it ({before.name}) matches: the "
            f"cause is between them, in that layer's output as this one takes it{split} or the "
            "model's ops between the layers; else this layer's own weights or gate order"
        )
    if takes_lengths and bad.without_lengths:
        nodes = ", ".join(repr(n) for n in bad.without_lengths)
        cut = text.index("->") if "->" in text else len(text)
        text = text[:cut] + (
            f"-> node {nodes} takes no sequence_lens although the graph takes lengths: its "
            "backward direction starts at the padded end of every short row (not a reversal "
            "bug in the graph's reversal ops)"
        )
    earlier = [n for layer in layers[: layers.index(bad)] for n in layer.without_lengths]
    if takes_lengths and earlier:  # an earlier layer matches at its valid steps; its h_n not
        nodes = ", ".join(repr(n) for n in earlier)
        text += (
            f"; an earlier layer matches at its valid steps, but its node {nodes} takes no "
            "sequence_lens although the graph takes lengths: if the model feeds that layer's "
            "final state (h_n) into this one (a character encoder per word), that is the cause"
        )
    return f"{text} {where}"


def _diagnose_state(
    tensor: TensorSpec,
    actual: np.ndarray,
    expected: np.ndarray,
    lengths: np.ndarray,
    tol: Tolerance,
    steps: int | None,
    sequence_ok: bool,
) -> str:
    bad = _outside(actual, expected, tol)
    b_axis = tensor.batch_axis
    parts, wrong_rows = [], {}
    for label, sl in (("forward", slice(0, None, 2)), ("backward", slice(1, None, 2))):
        part = np.moveaxis(bad[sl], b_axis, 0)
        rows = np.flatnonzero(part.reshape(part.shape[0], -1).any(1)).tolist()
        err = float(abs_errors(actual[sl], expected[sl]).max(initial=0.0))
        wrong_rows[label] = rows
        if rows:
            shown = ", ".join(f"{r} (len {int(lengths[r])})" for r in rows[:8])
            parts.append(f"{label} entries differ (max abs {err:.3g}) in rows {shown}")
        else:
            parts.append(f"{label} entries match (max abs {err:.3g})")
    text = f"{tensor.name}: " + "; ".join(parts)
    forward, backward = wrong_rows["forward"], wrong_rows["backward"]
    if not sequence_ok:
        return text + " -> see the sequence output: the state follows from that mismatch"
    short = steps is not None and all(int(lengths[r]) < steps for r in forward)
    if forward and not backward and short:
        return text + (
            " -> the sequence output matches but the forward final state is wrong only in rows "
            "shorter than T: it is taken at step T - 1 instead of each row's last valid step "
            "(lengths[b] - 1)"
        )
    if backward and not forward:
        return text + (
            " -> the sequence output matches but the backward final state is wrong: it must "
            "be the backward pass's state after step 0"
        )
    return text + " -> the sequence output matches: the final states are gathered wrongly"


def _some_rows(
    firsts: Sequence[Sequence[int | None]], lengths: np.ndarray, steps: int
) -> list[int]:
    """The rows that differ (in any of the halves whose first diverging steps are ``firsts``)
    where another row of more than one step, at least as long, matches in all of them: one
    row's own cause (its length as the graph reads it), not the weights, which reach every row
    of its kind, nor drift, which grows with the length (users44 F2); nor a reversal of the
    whole padded tensor, which reaches exactly the rows shorter than T. Empty otherwise."""
    differ = [r for r in range(len(lengths)) if any(f[r] is not None for f in firsts)]
    match = [int(lengths[r]) for r in range(len(lengths)) if r not in differ and lengths[r] > 1]
    shorter = [r for r in range(len(lengths)) if int(lengths[r]) < steps]
    if differ == shorter or not match:
        return []
    return differ if any(max(match) >= int(lengths[r]) for r in differ) else []


def _verdict(
    halves: list[tuple[str, list[int | None], float, list[bool]]],
    lengths: np.ndarray,
    steps: int,
    tol: Tolerance,
) -> str:
    """What the halves' differences say: per half its label, each row's first diverging step
    (``None``: the row matches), the largest difference, and whether each row's last valid
    step differs."""
    bad = [half for half in halves if any(f is not None for f in half[1])]
    if not bad:
        return "-> both halves match at valid steps: the difference is elsewhere"
    rows = _some_rows([half[1] for half in bad], lengths, steps)
    if rows:
        which = f"the {bad[0][0]} direction differs" if len(bad) == 1 else "both directions differ"
        shown = ", ".join(f"{r} (len {int(lengths[r])})" for r in rows[:8])
        return (
            f"-> {which} only in row(s) {shown}, while rows at least as long match: "
            "the weights and the reversal are right, and those rows' lengths as the graph reads "
            "them (the sequence_lens fed to the node, or the lengths its ReverseSequence reads) "
            "differ from the model's"
        )
    if len(bad) == 1:
        label, firsts, _, ends = bad[0]
        other = "forward" if label == "backward" else "backward"
        full_rows = [r for r, n in enumerate(lengths) if int(n) == steps]
        full_ok = bool(full_rows) and all(firsts[r] is None for r in full_rows)
        if label == "backward" and full_ok:
            return (
                "-> only the backward direction is wrong, and only in rows shorter than T (the "
                "full-length rows match): a reversal bug (the padded tensor flipped as a whole "
                "instead of each row's valid prefix, so the backward pass starts on padding)"
            )
        if label == "backward" and not full_rows:
            return (
                "-> only the backward direction is wrong; no row here has the full length T, so "
                "this case cannot tell a reversal bug from wrong backward weights (see a ragged "
                "case)"
            )
        ones = [r for r, n in enumerate(lengths) if int(n) == 1]
        longer = [r for r, n in enumerate(lengths) if int(n) > 1]
        # Rows of one step read the same either way; a backward pass run in time order
        # starts at the first step, so each longer row differs at its last one already (a
        # wrong recurrent weight cannot: the backward pass starts there from its initial state)
        in_time_order = (
            ones
            and longer
            and all(firsts[r] is None for r in ones)
            and all(ends[r] for r in longer)
        )
        if label == "backward" and in_time_order:
            return (
                "-> only the backward direction is wrong, in every row longer than one step, "
                "and rows of one step (the same read either way) match: the backward node reads "
                "its rows in time order, not reversed: check the reversal of its input (a "
                "ReverseSequence by each row's length before it)"
            )
        which = ", full-length rows included" if full_rows else ""
        unknown = "" if ones or label == "forward" else ", or its input not reversed"
        return (
            f"-> only the {label} direction is wrong{which} ({other} matches, so the graph's "
            f"shared input is right): check the {label} weights, their gate order and bias "
            f"(and its initial states, where the layer is given them){unknown}"
        )
    worst = max(err for _, _, err, _ in bad)
    if worst <= 100 * max(tol.atol, 1e-12):
        return (
            "-> both directions differ by small amounts: numeric drift (precision or "
            "accumulation order), not a structural bug; loosen --atol/--rtol if acceptable"
        )
    return (
        "-> both directions differ: a shared cause (input handling, weights, gate order or "
        "masking) rather than the reversal"
    )
