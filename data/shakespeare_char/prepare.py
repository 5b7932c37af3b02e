"""
Prepare tiny shakespeare for character-level language modeling, like
nanoGPT's data/shakespeare_char: every character is a token. Writes
train.bin, val.bin (uint16 ids, first 90% / last 10% of the text) and
meta.pkl (vocab_size, itos, stoi) into this folder or --out_dir.

    python data/shakespeare_char/prepare.py                    # downloads input.txt
    python data/shakespeare_char/prepare.py --input input.txt  # offline

On the 1,115,394-character text: vocab 65, 1,003,854 train and 111,540 val tokens.
"""

import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))  # data/, home of prepare_lib

from prepare_lib import prepare_shakespeare  # noqa: E402

if __name__ == "__main__":
    prepare_shakespeare("char", HERE)
