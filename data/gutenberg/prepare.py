"""
Project Gutenberg books as UTF-8 bytes: the data-rich testbed for growth research.

    python data/gutenberg/prepare.py --input ../shared/data/gutenberg   # local pg<N>.txt files, offline
    python data/gutenberg/prepare.py                                     # download the books first

The books are listed in books.tsv beside this script (EBook number, split, title): 302 English
books, 17 of them (every 18th by EBook number, about 6.6M bytes of text) are the validation split.
Whole books go to one split or the other, never both. Without --input the listed books are
downloaded one at a time, with a pause between requests, into --books_dir; books already there are
kept, so an interrupted download resumes.

Each book's Project Gutenberg header and licence footer (everything up to the `*** START OF` line
and from the `*** END OF` line on) is cut; a book without those lines is refused. Line endings
become \n, books are joined by a blank line. Tokens are the text's UTF-8 bytes (vocab 256, meta.pkl
says tokenizer 'bytes'), so any text can be scored with no unknown symbols, and a loss in nats per
token reads as bits per byte after dividing by ln 2. The outputs replace those of an earlier run only
when every book was read and checked (through .tmp files): a refused book leaves them as they were.
"""

import argparse
import csv
import os
import re
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # data/, home of prepare_lib

from prepare_lib import PrepareError, download, staged_outputs, write_meta  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
BOOK_URL = "https://www.gutenberg.org/cache/epub/{n}/pg{n}.txt"
START = re.compile(rb"^\*\*\* ?START OF (THE|THIS) PROJECT GUTENBERG EBOOK.*$", re.MULTILINE)
END = re.compile(rb"^\*\*\* ?END OF (THE|THIS) PROJECT GUTENBERG EBOOK.*$", re.MULTILINE)


def read_book_list(path):
    """[(ebook number, split)] from books.tsv."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    bad = [r for r in rows if r["split"] not in ("train", "val") or not r["ebook"].isdigit()]
    if bad:
        raise PrepareError(f"{path}: bad row {bad[0]} (ebook must be a number, split train or val)")
    return [(int(r["ebook"]), r["split"]) for r in rows]


def book_text(path):
    """The book's text without its Project Gutenberg header and footer, as UTF-8 bytes with \n endings."""
    with open(path, "rb") as f:
        raw = f.read().replace(b"\r\n", b"\n")
    start, end = START.search(raw), END.search(raw)
    if start is None or end is None or end.start() < start.end():
        raise PrepareError(f"{path}: no '*** START OF' / '*** END OF' Project Gutenberg lines, so its "
                           "header and licence cannot be cut; remove the file or add the lines")
    body = raw[start.end():end.start()].strip(b"\n")
    try:
        body.decode("utf-8")
    except UnicodeDecodeError as e:
        raise PrepareError(f"{path} is not UTF-8 text ({e.reason})")
    return body


def download_books(numbers, books_dir, pause_s):
    """Fetch the books not yet in books_dir, one at a time, pausing between requests."""
    os.makedirs(books_dir, exist_ok=True)
    missing = [n for n in numbers if not os.path.isfile(os.path.join(books_dir, f"pg{n}.txt"))]
    print(f"{len(numbers) - len(missing)} of {len(numbers)} books already in {books_dir}")
    for i, n in enumerate(missing):
        url = BOOK_URL.format(n=n)
        print(f"downloading {url} ({i + 1}/{len(missing)})")
        download(url, os.path.join(books_dir, f"pg{n}.txt"))
        if i + 1 < len(missing):
            time.sleep(pause_s)


def prepare_books(books_dir, split_of, out_dir):
    """Tokenize the pg<N>.txt books of books_dir (split_of: N -> 'train' or 'val') into out_dir/
    {train.bin, val.bin, meta.pkl}; print and return the counts per split."""
    paths = {n: os.path.join(books_dir, f"pg{n}.txt") for n in split_of}
    missing = [p for p in paths.values() if not os.path.isfile(p)]
    if missing:
        raise PrepareError(f"{len(missing)} listed book(s) not found, first {missing[0]}")
    numbers_of = {split: sorted(n for n, s in split_of.items() if s == split) for split in ("train", "val")}
    for split, numbers in numbers_of.items():
        if not numbers:
            raise PrepareError(f"no book in the {split} split")
    counts = {}
    with staged_outputs(out_dir, ("train.bin", "val.bin", "meta.pkl")) as outputs:
        for split, numbers in numbers_of.items():
            n_bytes = 0
            with open(outputs[f"{split}.bin"], "wb") as out:
                for i, n in enumerate(numbers):
                    text = book_text(paths[n]) + (b"\n\n" if i + 1 < len(numbers) else b"")
                    np.frombuffer(text, dtype=np.uint8).astype(np.uint16).tofile(out)
                    n_bytes += len(text)
            counts[split] = (len(numbers), n_bytes)
            print(f"{split}: {len(numbers)} books, {n_bytes:,} bytes (tokens)")
        write_meta(outputs["meta.pkl"], {"vocab_size": 256, "tokenizer": "bytes", "val_books": numbers_of["val"]})
    return counts


def main():
    parser = argparse.ArgumentParser(description="Project Gutenberg books as UTF-8 bytes into train.bin, val.bin, meta.pkl")
    parser.add_argument("--input", help="a folder of local pg<N>.txt files; without it the books are downloaded")
    parser.add_argument("--books", default=os.path.join(HERE, "books.tsv"), help="the book list (EBook number, split)")
    parser.add_argument("--books_dir", default=os.path.join(HERE, "books"), help="where downloaded books go")
    parser.add_argument("--pause", type=float, default=2.0, help="seconds between two downloads")
    parser.add_argument("--out_dir", default=HERE, help="output folder (default: this script's folder)")
    args = parser.parse_args()
    try:
        split_of = dict(read_book_list(args.books))
        if args.input is None:
            download_books(sorted(split_of), args.books_dir, args.pause)
        elif not os.path.isdir(args.input):
            raise PrepareError(f"--input {args.input} is not a folder")
        prepare_books(args.input or args.books_dir, split_of, args.out_dir)
    except PrepareError as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    main()
