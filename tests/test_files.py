"""Writing files and telling their sizes (birnn_export._files)."""

from __future__ import annotations

from birnn_export._files import size_text


def test_sizes_are_told_in_the_unit_that_reads() -> None:
    """A 370 MB graph was "Wrote big.onnx (360981.8 KiB, ...)" (users32)."""
    assert size_text(900) == "900 B"
    assert size_text(174_592) == "170.5 KiB"  # the README's sample
    assert size_text(369_636_629) == "352.5 MiB"
    assert size_text(2_237_104_128) == "2.1 GiB"
    assert size_text(5 * 2**40) == "5120.0 GiB"
