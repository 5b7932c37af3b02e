"""
data/gutenberg/prepare.py on tiny synthetic books: header and footer cut, whole books per split,
a book without the Project Gutenberg lines refused, bytes that decode back to the text, and the
download path (resumable, polite) with the network replaced by a local function.
"""

import importlib.util
import os

import numpy as np
import pytest

from test_prepare import REPO, load, offline_env, run, run_ok

import sample

PREPARE = os.path.join(REPO, "data", "gutenberg", "prepare.py")
HEADER = ("\ufeffThe Project Gutenberg eBook of {title}\r\n\r\nThis eBook is for the use of anyone anywhere.\r\n\r\n"
          "*** START OF THE PROJECT GUTENBERG EBOOK {title} ***\r\n")
FOOTER = "*** END OF THE PROJECT GUTENBERG EBOOK {title} ***\r\n\r\nSection 5. General Information.\r\n"
BODIES = {
    11: "Alice was beginning to get very tired\r\nof sitting by her sister.\r\n",
    12: "Caf\u00e9 au lait, na\u00efve \u65e5\u672c\u8a9e \u2014 the end.\r\n",
    13: "Call me Ishmael.\r\n",
}


def write_books(folder, bodies=BODIES, splits=None):
    """pg<N>.txt books with a header and footer, and a books.tsv naming their splits (13 is val)."""
    os.makedirs(folder, exist_ok=True)
    for n, body in bodies.items():
        title = f"BOOK {n}"
        with open(os.path.join(folder, f"pg{n}.txt"), "w", encoding="utf-8", newline="") as f:
            f.write(HEADER.format(title=title) + "\r\n" + body + "\r\n\r\n" + FOOTER.format(title=title))
    splits = splits or {n: ("val" if n == 13 else "train") for n in bodies}
    tsv = os.path.join(folder, "books.tsv")
    with open(tsv, "w") as f:
        f.write("ebook\tsplit\ttitle\n" + "".join(f"{n}\t{s}\tBook {n}\n" for n, s in splits.items()))
    return tsv


def text_of(tokens):
    return bytes(tokens.astype(np.uint8)).decode("utf-8")


def test_header_footer_cut_and_split_by_book(tmp_path):
    books, out = str(tmp_path / "books"), str(tmp_path / "out")
    result = run_ok(PREPARE, "--input", books, "--books", write_books(books), "--out_dir", out)
    train, val, meta = load(out)
    unix = {n: body.replace("\r\n", "\n").strip("\n") for n, body in BODIES.items()}
    assert text_of(train) == unix[11] + "\n\n" + unix[12]
    assert text_of(val) == unix[13]
    assert meta["tokenizer"] == "bytes" and meta["vocab_size"] == 256 and meta["val_books"] == [13]
    assert f"train: 2 books, {len(train):,} bytes" in result.stdout
    assert f"val: 1 books, {len(val):,} bytes" in result.stdout
    assert len(train) == len((unix[11] + "\n\n" + unix[12]).encode("utf-8")) == 109


@pytest.mark.slow
def test_book_without_markers_is_refused(tmp_path):
    books, out = str(tmp_path / "books"), str(tmp_path / "out")
    tsv = write_books(books)
    with open(os.path.join(books, "pg12.txt"), "w", encoding="utf-8") as f:
        f.write("a book whose licence text has no markers\n")
    result = run(PREPARE, "--input", books, "--books", tsv, "--out_dir", out)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "pg12.txt" in lines[0] and "*** START OF" in lines[0], result.stderr
    assert not os.path.exists(os.path.join(out, "meta.pkl"))


@pytest.mark.slow
def test_missing_book_and_empty_split_are_refused(tmp_path):
    books, out = str(tmp_path / "books"), str(tmp_path / "out")
    tsv = write_books(books)
    os.remove(os.path.join(books, "pg11.txt"))
    result = run(PREPARE, "--input", books, "--books", tsv, "--out_dir", out)
    assert result.returncode == 1 and "pg11.txt" in result.stderr
    tsv = write_books(books, splits={11: "train", 12: "train", 13: "train"})
    result = run(PREPARE, "--input", books, "--books", tsv, "--out_dir", out)
    assert result.returncode == 1 and "no book in the val split" in result.stderr


def test_bytes_round_trip_through_sample(tmp_path):
    books, out = str(tmp_path / "books"), str(tmp_path / "out")
    run_ok(PREPARE, "--input", books, "--books", write_books(books), "--out_dir", out)
    encode, decode = sample.codec({"config": {"data_dir": out, "dataset": "unused"}})
    text = "na\u00efve \u65e5\u672c\u8a9e \U0001F3AD \u2014 \u00e9t\u00e9\n"
    assert decode(encode(text)) == text
    assert len(encode(text)) == len(text.encode("utf-8")) == 32
    assert decode([104, 105, 0xE6, 0x97]) == "hi\ufffd"  # a cut multi-byte character shows as a replacement


def load_prepare_module():
    spec = importlib.util.spec_from_file_location("gutenberg_prepare", PREPARE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_download_is_resumable_and_polite(tmp_path, monkeypatch):
    module = load_prepare_module()
    source = str(tmp_path / "source")
    write_books(source)
    books_dir = str(tmp_path / "downloaded")
    os.makedirs(books_dir)
    with open(os.path.join(books_dir, "pg11.txt"), "w") as f:
        f.write("kept as it is")
    fetched, pauses = [], []

    def fake_download(url, path):
        n = int(url.rsplit("/pg", 1)[1][:-4])
        fetched.append(url)
        with open(os.path.join(source, f"pg{n}.txt"), "rb") as src, open(path, "wb") as dst:
            dst.write(src.read())

    monkeypatch.setattr(module, "download", fake_download)
    monkeypatch.setattr(module.time, "sleep", pauses.append)
    module.download_books([11, 12, 13], books_dir, 2.5)
    assert fetched == ["https://www.gutenberg.org/cache/epub/12/pg12.txt",
                       "https://www.gutenberg.org/cache/epub/13/pg13.txt"]
    assert pauses == [2.5]
    with open(os.path.join(books_dir, "pg11.txt")) as f:
        assert f.read() == "kept as it is"
    fetched.clear()
    module.download_books([11, 12, 13], books_dir, 2.5)
    assert fetched == []


@pytest.mark.slow
def test_no_input_and_no_network_is_one_line(tmp_path):
    tsv = write_books(str(tmp_path / "source"))
    result = run(PREPARE, "--books", tsv, "--books_dir", str(tmp_path / "dl"), "--out_dir", str(tmp_path / "out"),
                 env=offline_env())
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [result.stderr.strip()]
    assert "could not download https://www.gutenberg.org/cache/epub/11/pg11.txt" in result.stderr


@pytest.mark.skipif(not os.path.isdir(os.path.join(REPO, "..", "shared", "data", "gutenberg")),
                    reason="needs ../shared/data/gutenberg")
def test_every_listed_book_is_in_the_shared_copy_and_val_is_large_enough():
    module = load_prepare_module()
    listed = module.read_book_list(os.path.join(REPO, "data", "gutenberg", "books.tsv"))
    shared = os.path.join(REPO, "..", "shared", "data", "gutenberg")
    assert len(listed) == 302 and sum(s == "val" for _, s in listed) == 17
    val_bytes = sum(len(module.book_text(os.path.join(shared, f"pg{n}.txt"))) for n, s in listed if s == "val")
    assert val_bytes >= 5_000_000
