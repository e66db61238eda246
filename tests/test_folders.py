"""One process owns a folder at a time; outputs are replaced whole."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from thumbs.errors import ThumbsError
from thumbs.folders import owned, staging, swap_in, write_text

HOLD = textwrap.dedent(
    """
    import sys, time
    from thumbs.folders import owned
    with owned(sys.argv[1], "test-holder"):
        print("held", flush=True)
        time.sleep(float(sys.argv[2]))
    """
)


def test_a_second_process_is_refused_while_the_first_holds_the_folder(tmp_path):
    folder = tmp_path / "run"
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(folder), "30"], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        with (
            pytest.raises(ThumbsError, match="in use by another thumbs command .*test-holder"),
            owned(folder),
        ):
            pass
    finally:
        holder.kill()
        holder.wait()
    with owned(folder):  # killed (-9): the kernel released its lock, the folder is free again
        pass


def test_owned_is_reentrant_within_one_process_and_released_after(tmp_path):
    with owned(tmp_path / "run"), owned(tmp_path / "run"):
        pass
    with owned(tmp_path / "run"):
        pass


def test_a_file_where_the_folder_should_be_is_a_clear_error(tmp_path):
    (tmp_path / "parent").write_text("x")
    with (
        pytest.raises(ThumbsError, match="a file stands where the output folder should be"),
        owned(tmp_path / "parent" / "run"),
    ):
        pass


def test_swap_in_replaces_the_folder_whole(tmp_path):
    target = tmp_path / "data"
    target.mkdir()
    (target / "old.txt").write_text("old")
    tmp = staging(target)
    (tmp / "new.txt").write_text("new")
    swap_in(tmp, target)
    assert sorted(p.name for p in target.iterdir()) == ["new.txt"]
    assert not tmp.exists() and not list(tmp_path.glob(".data.old-*"))


def test_write_text_leaves_no_temporary_file(tmp_path):
    write_text(tmp_path / "a.json", "1")
    write_text(tmp_path / "a.json", "2")
    assert (tmp_path / "a.json").read_text() == "2"
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]
