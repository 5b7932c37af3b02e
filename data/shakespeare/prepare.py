"""
Prepare tiny shakespeare with the GPT-2 BPE tokenizer (tiktoken's gpt2,
encode_ordinary), like nanoGPT's data/shakespeare. Writes train.bin, val.bin
(uint16 ids of the first 90% / last 10% of the text, each encoded on its own)
and meta.pkl ({'vocab_size': 50257, 'tokenizer': 'gpt2'}) into this folder or
--out_dir.

    python data/shakespeare/prepare.py                    # downloads input.txt
    python data/shakespeare/prepare.py --input input.txt  # offline text

tiktoken fetches the gpt2 BPE files on first use and caches them
($TIKTOKEN_CACHE_DIR), so a machine that never had network access needs that
cache copied in.
"""

import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))  # data/, home of prepare_lib

from prepare_lib import prepare_shakespeare  # noqa: E402

if __name__ == "__main__":
    prepare_shakespeare("gpt2", HERE)
