"""models.cache.building: a build replaces the cached folder only when it finishes."""

from __future__ import annotations

import pytest

from models.cache import building


def test_a_finished_build_replaces_the_folder(tmp_path):
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "old.txt").write_text("old")
    with building(folder) as work:
        assert work != folder and not any(work.iterdir())
        (work / "model.onnx").write_text("new")
    assert sorted(p.name for p in folder.iterdir()) == ["model.onnx"]
    assert not work.exists()


def test_an_interrupted_build_leaves_the_folder_as_it_was(tmp_path):
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "old.txt").write_text("old")
    with pytest.raises(KeyboardInterrupt), building(folder) as work:
        (work / "model.onnx").write_text("half")
        raise KeyboardInterrupt
    assert sorted(p.name for p in folder.iterdir()) == ["old.txt"]
    with building(folder) as work:  # the next build starts from an empty folder again
        assert not any(work.iterdir())
