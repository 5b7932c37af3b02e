"""
Shared helpers for the data/*/prepare.py scripts: turn text files into
train.bin / val.bin (raw uint16 token ids, read back with
np.memmap(path, dtype=np.uint16, mode='r')) plus a meta.pkl that says how to
decode them:

    char: {'vocab_size': V, 'itos': {id: ch}, 'stoi': {ch: id}, 'tokenizer': 'char'}
    gpt2: {'vocab_size': 50257, 'tokenizer': 'gpt2'}

Everything streams: text is read in chunks of chunk_chars characters, so a
corpus far bigger than memory works. There are two passes over the files. The
first counts each file's characters and collects the character set (the char
vocabulary). The second encodes and appends tokens to the .bin files.

The split: the first int(n * (1 - val_fraction)) characters of each file go to
train, the rest of that file to val. For a single file this is nanoGPT's split.
Train and val parts are encoded separately, and files are concatenated with no
separator token. Files are read as UTF-8 in text mode, so \r\n becomes \n.
"""

import argparse
import os
import pickle
import sys
import urllib.request
from contextlib import contextmanager, suppress

import numpy as np

CHUNK_CHARS = 1 << 22  # 4M characters per read
MAX_VOCAB = 65535  # token ids are stored as uint16
GPT2_VOCAB = 50257


class PrepareError(Exception):
    """A problem with the user's input; scripts print the message, not a traceback."""


def find_text_files(path):
    """A file is taken as is; a folder gives its .txt files, recursively, in sorted order."""
    if os.path.isfile(path):
        return [path]
    if not os.path.isdir(path):
        raise PrepareError(f"input path {path} does not exist")
    files = []
    for root, _, names in os.walk(path):
        files += [os.path.join(root, name) for name in names if name.endswith(".txt")]
    if not files:
        raise PrepareError(f"no .txt files in folder {path}")
    return sorted(files)


def open_text(path):
    return open(path, "r", encoding="utf-8")


def read_pieces(f, n, chunk_chars):
    """Yield the next n characters of f, at most chunk_chars at a time."""
    while n > 0:
        piece = f.read(min(n, chunk_chars))
        if not piece:
            return
        n -= len(piece)
        yield piece


def scan(files, chunk_chars):
    """First pass: the character count of each file and the set of all characters."""
    counts, chars = [], set()
    for path in files:
        n = 0
        try:
            with open_text(path) as f:
                for piece in iter(lambda: f.read(chunk_chars), ""):
                    n += len(piece)
                    chars.update(piece)
        except UnicodeDecodeError as e:
            raise PrepareError(f"{path} is not UTF-8 text ({e.reason})")
        counts.append(n)
    return counts, chars


def split_point(n_chars, val_fraction):
    """How many of a file's n_chars characters go to train."""
    return int(n_chars * (1 - val_fraction))


def char_vocab(chars):
    """stoi / itos over the sorted character set, like nanoGPT's shakespeare_char."""
    if len(chars) > MAX_VOCAB:
        raise PrepareError(
            f"{len(chars)} distinct characters, more than a uint16 token id can hold ({MAX_VOCAB})"
        )
    itos = dict(enumerate(sorted(chars)))
    stoi = {ch: i for i, ch in itos.items()}
    return stoi, itos


def char_encoder(stoi):
    """Encode pieces of text through a code point -> id lookup table (fast numpy indexing)."""
    lut = np.zeros(max(map(ord, stoi)) + 1, dtype=np.uint16)
    for ch, i in stoi.items():
        lut[ord(ch)] = i

    def encode(pieces):
        for piece in pieces:
            yield lut[np.frombuffer(piece.encode("utf-32-le"), dtype="<u4")]

    return encode


def load_gpt2():
    """tiktoken's gpt2 encoding; it downloads its BPE files on first use and caches them."""
    try:
        import tiktoken
    except ImportError:
        raise PrepareError("the gpt2 tokenizer needs tiktoken: pip install tiktoken")
    try:
        return tiktoken.get_encoding("gpt2")
    except Exception as e:
        raise PrepareError(
            f"could not load tiktoken's gpt2 encoding ({type(e).__name__}). tiktoken downloads it on "
            "first use and caches it in $TIKTOKEN_CACHE_DIR: run once with network access, or point "
            "TIKTOKEN_CACHE_DIR at a folder that holds the cached files"
        )


def safe_cut(text):
    """
    The last index i where text[i] is a space or newline and text[i-1] is not
    whitespace, or 0 if there is none. gpt2's pre-tokenizer regex always
    splits there and never looks back across it, so text[:i] and text[i:]
    encode to exactly the tokens of text.
    """
    i = max(text.rfind(" "), text.rfind("\n"))
    while i > 0:
        if not text[i - 1].isspace():
            return i
        i = max(text.rfind(" ", 0, i), text.rfind("\n", 0, i))
    return 0


def gpt2_encoder(enc):
    """Encode pieces with BPE, holding back the text after the last safe cut for the next piece."""

    def encode(pieces):
        pending = ""
        for piece in pieces:
            pending += piece
            cut = safe_cut(pending)
            if cut:
                yield np.array(enc.encode_ordinary(pending[:cut]), dtype=np.uint16)
                pending = pending[cut:]
        # a text with no whitespace keeps growing pending until the part ends
        if pending:
            yield np.array(enc.encode_ordinary(pending), dtype=np.uint16)

    return encode


def append_tokens(out, arrays):
    """Write each uint16 array to the open file out; return how many tokens were written."""
    n = 0
    for arr in arrays:
        arr.tofile(out)
        n += len(arr)
    return n


def write_meta(path, meta):
    with open(path, "wb") as f:
        pickle.dump(meta, f)


@contextmanager
def staged_outputs(out_dir, names):
    """{name: out_dir/name.tmp}: the block writes each output there, and the .tmp files replace the
    outputs only when the block finished. On any error they are removed, and the outputs of an
    earlier run stay as they were (like the checkpoint writer)."""
    os.makedirs(out_dir, exist_ok=True)
    paths = {name: os.path.join(out_dir, name + ".tmp") for name in names}
    try:
        yield paths
    except BaseException:
        for path in paths.values():
            with suppress(FileNotFoundError):
                os.remove(path)
        raise
    for name, path in paths.items():  # in the order given: meta.pkl last says the set is complete
        os.replace(path, os.path.join(out_dir, name))


def prepare(files, out_dir, tokenizer, val_fraction=0.1, chunk_chars=CHUNK_CHARS):
    """Tokenize files into out_dir/{train.bin, val.bin, meta.pkl}; print and return the counts."""
    if not 0 < val_fraction < 1:
        raise PrepareError(f"val_fraction must be between 0 and 1, got {val_fraction}")
    if chunk_chars < 1:
        raise PrepareError(f"chunk_chars must be at least 1, got {chunk_chars}")
    if tokenizer not in ("char", "gpt2"):
        raise PrepareError(f"unknown tokenizer {tokenizer!r}, expected 'char' or 'gpt2'")
    enc = load_gpt2() if tokenizer == "gpt2" else None  # fail before the long first pass

    counts, chars = scan(files, chunk_chars)
    n_chars = sum(counts)
    n_train_chars = sum(split_point(n, val_fraction) for n in counts)
    print(f"{len(files):,} file(s), {n_chars:,} characters")
    if n_chars == 0:
        raise PrepareError("the input holds no text")
    if n_train_chars in (0, n_chars):
        raise PrepareError(
            f"too little text ({n_chars:,} characters) to split with val_fraction {val_fraction}"
        )

    if tokenizer == "char":
        stoi, itos = char_vocab(chars)
        encode = char_encoder(stoi)
        meta = {"vocab_size": len(stoi), "itos": itos, "stoi": stoi, "tokenizer": "char"}
    else:
        encode = gpt2_encoder(enc)
        meta = {"vocab_size": GPT2_VOCAB, "tokenizer": "gpt2"}
    print(f"vocab size: {meta['vocab_size']:,}")

    n_train = n_val = 0
    with staged_outputs(out_dir, ("train.bin", "val.bin", "meta.pkl")) as outputs:
        with open(outputs["train.bin"], "wb") as train_out, open(outputs["val.bin"], "wb") as val_out:
            for path, n in zip(files, counts):
                k = split_point(n, val_fraction)
                with open_text(path) as f:
                    n_train += append_tokens(train_out, encode(read_pieces(f, k, chunk_chars)))
                    n_val += append_tokens(val_out, encode(read_pieces(f, n - k, chunk_chars)))
        write_meta(outputs["meta.pkl"], meta)
    print(f"train has {n_train:,} tokens")
    print(f"val has {n_val:,} tokens")
    return {"vocab_size": meta["vocab_size"], "train_tokens": n_train, "val_tokens": n_val}


def download(url, path):
    """Fetch url into path, through a temporary file so a failed download leaves nothing behind."""
    tmp = path + ".part"
    try:
        with urllib.request.urlopen(url, timeout=30) as response, open(tmp, "wb") as f:
            f.write(response.read())
    except OSError as e:  # urllib.error.URLError is an OSError
        if os.path.exists(tmp):
            os.remove(tmp)
        raise PrepareError(f"could not download {url} ({getattr(e, 'reason', e)})")
    os.replace(tmp, path)


SHAKESPEARE_URL = "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"


def shakespeare_input(input_path, out_dir):
    """The --input file if given, else out_dir/input.txt, downloaded when missing."""
    if input_path is not None:
        if not os.path.isfile(input_path):
            raise PrepareError(f"--input {input_path} is not a file")
        return input_path
    path = os.path.join(out_dir, "input.txt")
    if not os.path.exists(path):
        print(f"downloading {SHAKESPEARE_URL}")
        os.makedirs(out_dir, exist_ok=True)
        try:
            download(SHAKESPEARE_URL, path)
        except PrepareError as e:
            raise PrepareError(f"{e}; offline, pass --input FILE with a local copy of tiny shakespeare")
    return path


def prepare_shakespeare(tokenizer, script_dir):
    """The command line of data/shakespeare*/prepare.py: tiny shakespeare, 90% train / 10% val."""
    parser = argparse.ArgumentParser(
        description=f"tokenize tiny shakespeare ({tokenizer}) into train.bin, val.bin, meta.pkl"
    )
    parser.add_argument(
        "--input", help="a local copy of the text; without it input.txt is downloaded into the output folder"
    )
    parser.add_argument("--out_dir", default=script_dir, help="output folder (default: this script's folder)")
    args = parser.parse_args()
    try:
        prepare([shakespeare_input(args.input, args.out_dir)], args.out_dir, tokenizer)
    except PrepareError as e:
        sys.exit(f"error: {e}")
