"""Writing files and telling their sizes (birnn_export._files)."""

from __future__ import annotations

import pytest

from birnn_export._files import size_text


def test_sizes_are_told_in_the_unit_that_reads() -> None:
    """A 370 MB graph was "Wrote big.onnx (360981.8 KiB, ...)" (users32)."""
    assert size_text(900) == "900 B"
    assert size_text(174_592) == "170.5 KiB"  # the README's sample
    assert size_text(369_636_629) == "352.5 MiB"
    assert size_text(2_237_104_128) == "2.1 GiB"
    assert size_text(5 * 2**40) == "5120.0 GiB"


def test_torch_files_are_told_by_their_bytes_not_their_name(tmp_path) -> None:
    import pickle

    import torch
    from onnx import helper

    from birnn_export._files import is_torch_file

    zipped, legacy, plain = tmp_path / "a.onnx", tmp_path / "b.onnx", tmp_path / "c.onnx"
    torch.save({"w": torch.ones(2)}, zipped)
    torch.save({"w": torch.ones(2)}, legacy, _use_new_zipfile_serialization=False)
    plain.write_bytes(pickle.dumps({"w": [1.0]}, protocol=4))
    graph = tmp_path / "g.pt"
    graph.write_bytes(helper.make_model(helper.make_graph([], "g", [], [])).SerializeToString())
    other_zip = tmp_path / "d.pt"
    import zipfile

    with zipfile.ZipFile(other_zip, "w") as archive:
        archive.writestr("readme.txt", "not a model")
    assert [is_torch_file(p) for p in (zipped, legacy, plain)] == [True, True, True]
    assert not any(is_torch_file(p) for p in (graph, other_zip, tmp_path / "absent.pt"))


def test_an_empty_output_path_is_told_as_empty() -> None:
    """review41 F7: ``-o ""`` was told ". is a directory" (``Path("")`` is ``.``)."""
    from birnn_export._files import check_output_path
    from birnn_export.errors import BiRNNExportError

    with pytest.raises(BiRNNExportError, match=r"^-o: an empty path; give a file name$"):
        check_output_path("-o", "")
