"""Atomic writes keep the user's umask and never leave half a file."""

import os
import stat

import pytest
import torch

from asdcli.atomic import atomic_path, write_text
from asdcli.checkpoints import save_arrays


@pytest.fixture(params=[0o022, 0o027, 0o002])
def umask(request):
    previous = os.umask(request.param)
    yield request.param
    os.umask(previous)


def test_files_get_the_mode_of_the_users_umask(tmp_path, umask):
    write_text(tmp_path / "a.csv", "x\n")
    save_arrays(tmp_path / "b.safetensors", {"x": torch.zeros(2)}, {"part": "test"})
    with atomic_path(tmp_path / "c.png") as tmp:
        tmp.write_bytes(b"png")
    for name in ("a.csv", "b.safetensors", "c.png"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o666 & ~umask, name


def test_a_failed_write_leaves_the_previous_file(tmp_path):
    write_text(tmp_path / "a.csv", "old\n")
    with pytest.raises(RuntimeError):
        with atomic_path(tmp_path / "a.csv") as tmp:
            tmp.write_text("half")
            raise RuntimeError("interrupted")
    assert (tmp_path / "a.csv").read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["a.csv"]
