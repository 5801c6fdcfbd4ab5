"""What the graph rewrites that replace one recurrent node share (:mod:`birnn_export._scan`,
:mod:`birnn_export._packed`): the node's attributes and inputs read once, constant weights read
from the initializers, and fresh names for the nodes, tensors and initializers they add."""

from __future__ import annotations

from typing import Any

#: ONNX's inputs of ``RNN``, ``GRU`` and ``LSTM``, in order (``RNN`` and ``GRU`` stop at h0;
#: ``p`` is an LSTM's peepholes, and an ``LSTMP``'s projection, see ``modules.LSTMP_OP``).
_INPUTS = ("x", "w", "r", "b", "lengths", "h0", "c0", "p")
DIRECTIONS = {
    "forward": ("forward",),
    "reverse": ("reverse",),
    "bidirectional": ("forward", "reverse"),
}


def i64(*values: int) -> Any:
    """A 1-D int64 array: the shape, index and axis constants of a rewrite."""
    import numpy as np

    return np.asarray(values, dtype=np.int64)


class NodeRewrite:
    """One recurrent node's replacement. Initializers go to ``graph``; nodes collect in
    :attr:`out`. Every name starts with ``{node name}/{kind}/`` and is new to the graph."""

    def __init__(
        self, node: Any, initializers: dict[str, Any], taken: set[str], graph: Any, kind: str
    ) -> None:
        from onnx import helper

        self.node, self.graph, self.taken, self.kind = node, graph, taken, kind
        self.attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        self.base = node.name or node.output[0]
        self.inputs = dict(zip(_INPUTS, [*node.input, *[""] * len(_INPUTS)], strict=False))
        self.hidden = int(self.attrs["hidden_size"])
        direction = self.attrs.get("direction", b"forward")
        self.directions = DIRECTIONS[
            direction.decode() if isinstance(direction, bytes) else direction
        ]
        self.initializers = initializers
        self.elem = (
            initializers[self.inputs["w"]].data_type if self.inputs["w"] in initializers else None
        )
        self.out: list[Any] = []
        self._small: dict[Any, str] = {}

    def constant(self, role: str) -> Any:
        """The node's input ``role`` (``"w"``, ``"r"``, ``"b"``, ``"p"``) as an array, or None
        where the node has no such input."""
        from onnx import numpy_helper

        name = self.inputs[role]
        if not name:
            return None
        if name not in self.initializers:
            raise ValueError(
                f"{self.node.op_type} node {self.base!r}: {name!r} is not an initializer"
            )
        return numpy_helper.to_array(self.initializers[name])

    def fresh(self, suffix: str) -> str:
        from birnn_export.spec import fresh_name

        return fresh_name(self.taken, f"{self.base}/{self.kind}/{suffix}")

    def const(self, suffix: str, value: Any) -> str:
        """An initializer holding ``value``; a small one (an index, a shape) is made once per
        rewrite and shared."""
        from onnx import numpy_helper

        key = (value.dtype.str, value.shape, value.tobytes()) if value.size <= 16 else None
        if key in self._small:
            return self._small[key]
        name = self.fresh(suffix)
        self.graph.initializer.append(numpy_helper.from_array(value, name))
        if key is not None:
            self._small[key] = name
        return name

    def op(self, op: str, inputs: list[str], suffix: str, outputs: int = 1, **attrs: Any) -> Any:
        """Append one ``op`` node; its output name (or names, for ``outputs`` > 1)."""
        from onnx import helper

        names = [self.fresh(f"{suffix}_{k}" if outputs > 1 else suffix) for k in range(outputs)]
        self.out.append(helper.make_node(op, inputs, names, name=self.fresh(op), **attrs))
        return names if outputs > 1 else names[0]


def replace_nodes(proto: Any, ops: set[str], rewrite: Any, domain: str = "") -> int:
    """Replace each main-graph node of type in ``ops`` (of ONNX's own domain, or ``domain``)
    for which ``rewrite(node, initializers, taken, graph)`` returns a node list (None: keep
    it), in place. Initializers only the replaced nodes used are dropped. Returns how many
    nodes were replaced."""
    from birnn_export.spec import all_nodes, graph_names

    graph = proto.graph
    initializers = {t.name: t for t in graph.initializer}
    taken = graph_names(graph)
    rewritten: list[Any] = []
    replaced: set[str] = set()
    count = 0
    for node in graph.node:
        new = None
        if node.op_type in ops and node.domain in ("", "ai.onnx", domain or ""):
            new = rewrite(node, initializers, taken, graph)
        if new is None:
            rewritten.append(node)
            continue
        rewritten.extend(new)
        replaced |= {name for name in node.input[1:] if name in initializers}
        count += 1
    if not count:
        return 0
    del graph.node[:]
    graph.node.extend(rewritten)
    used = {name for node in all_nodes(graph) for name in node.input}
    # the replaced nodes' weights now live on in new forms; the others stay where they are
    # (moved, a tensor over 2 GB is serialized, which protobuf cannot do)
    for index in reversed(range(len(graph.initializer))):
        name = graph.initializer[index].name
        if name in replaced and name not in used:
            del graph.initializer[index]
    return count
