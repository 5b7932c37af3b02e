"""
Prepare any text corpus: a .txt file, or a folder whose .txt files are read
recursively in sorted path order. Writes train.bin, val.bin (uint16 token ids)
and meta.pkl into --out_dir.

    python data/text/prepare.py --input corpus/ --out_dir data/mycorpus --tokenizer gpt2

It streams, so a corpus bigger than memory is fine: files are read
--chunk_chars characters at a time, in two passes. The first pass counts each
file's characters and, for --tokenizer char, collects the vocabulary (sorted
characters, at most 65535 of them). The second pass encodes and appends tokens.

Split: the first int(n * (1 - val_fraction)) characters of each file go to
train.bin and the rest of that file to val.bin, so val samples every file and a
single file is split exactly like nanoGPT does. The train and val parts of a
file are encoded separately; files follow each other with no separator token.
Chunking never changes the tokens: gpt2 text is only cut where its
pre-tokenizer splits anyway.
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # data/, home of prepare_lib

from prepare_lib import CHUNK_CHARS, PrepareError, find_text_files, prepare  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description="tokenize text files into train.bin, val.bin, meta.pkl")
    parser.add_argument("--input", required=True, help="a text file, or a folder of .txt files (recursive)")
    parser.add_argument("--out_dir", required=True, help="output folder")
    parser.add_argument("--tokenizer", required=True, choices=["char", "gpt2"])
    parser.add_argument("--val_fraction", type=float, default=0.1, help="share of each file's text for val")
    parser.add_argument("--chunk_chars", type=int, default=CHUNK_CHARS, help="characters read at a time")
    args = parser.parse_args()
    try:
        files = find_text_files(args.input)
        prepare(files, args.out_dir, args.tokenizer, args.val_fraction, args.chunk_chars)
    except PrepareError as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    main()
