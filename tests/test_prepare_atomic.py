"""
The prepare scripts write train.bin, val.bin and meta.pkl through temporary files renamed at the end:
a run that stops on bad input (or on anything else) leaves the outputs of the previous run as they
were, byte for byte, and no .tmp files.
"""

import os

import pytest

from helpers import file_state
from test_gutenberg import BODIES, load_prepare_module, write_books
from test_prepare import make_corpus, prepare_lib

OUTPUTS = ("train.bin", "val.bin", "meta.pkl")


def output_states(out):
    """Every file in out with its bytes and modification time."""
    return {name: file_state(os.path.join(out, name)) for name in sorted(os.listdir(out))}


def test_gutenberg_bad_book_leaves_the_previous_outputs(tmp_path):
    module = load_prepare_module()
    books, out = str(tmp_path / "books"), str(tmp_path / "out")
    write_books(books)
    split_of = {11: "train", 12: "train", 13: "val"}
    module.prepare_books(books, split_of, out)
    before = output_states(out)
    assert sorted(before) == sorted(OUTPUTS)
    # a changed train book (train.bin would be rewritten in full) and a val book without markers
    write_books(books, {**BODIES, 11: "A different first book.\r\n"})
    with open(os.path.join(books, "pg13.txt"), "w", encoding="utf-8") as f:
        f.write("a book whose licence text has no markers\n")
    with pytest.raises(prepare_lib.PrepareError, match="pg13.txt: no '\\*\\*\\* START OF'"):
        module.prepare_books(books, split_of, out)
    assert output_states(out) == before


def test_text_failure_while_writing_leaves_the_previous_outputs(tmp_path, monkeypatch):
    files = prepare_lib.find_text_files(make_corpus(tmp_path))
    out = str(tmp_path / "out")
    prepare_lib.prepare(files, out, "char", chunk_chars=7)
    before = output_states(out)
    assert sorted(before) == sorted(OUTPUTS)
    append, calls = prepare_lib.append_tokens, []

    def failing_append(out_file, arrays):  # the second file's tokens fail, after the first file's were written
        calls.append(out_file.name)
        if len(calls) == 3:
            raise OSError("No space left on device")
        return append(out_file, arrays)

    monkeypatch.setattr(prepare_lib, "append_tokens", failing_append)
    with pytest.raises(OSError, match="No space left on device"):
        prepare_lib.prepare(files[:1] + files, out, "char", chunk_chars=7)
    assert output_states(out) == before
    assert [os.path.basename(name) for name in calls] == ["train.bin.tmp", "val.bin.tmp", "train.bin.tmp"]


def test_first_run_that_fails_leaves_no_outputs(tmp_path):
    module = load_prepare_module()
    books, out = str(tmp_path / "books"), str(tmp_path / "out")
    write_books(books)
    with open(os.path.join(books, "pg13.txt"), "w", encoding="utf-8") as f:
        f.write("no markers\n")
    with pytest.raises(prepare_lib.PrepareError):
        module.prepare_books(books, {11: "train", 12: "train", 13: "val"}, out)
    assert os.listdir(out) == []


def test_staged_outputs_replace_all_at_the_end(tmp_path):
    out = str(tmp_path / "out")
    with prepare_lib.staged_outputs(out, OUTPUTS) as paths:
        assert paths == {name: os.path.join(out, name + ".tmp") for name in OUTPUTS}
        for name, path in paths.items():
            with open(path, "w") as f:
                f.write(name)
        assert sorted(os.listdir(out)) == sorted(name + ".tmp" for name in OUTPUTS)
    for name in OUTPUTS:
        with open(os.path.join(out, name)) as f:
            assert f.read() == name
    assert sorted(os.listdir(out)) == sorted(OUTPUTS)
