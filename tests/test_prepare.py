"""
Tests for data/*/prepare.py. The scripts run as subprocesses on small texts
made here, writing into tmp_path. The network is never touched: every
subprocess gets proxies pointing at a closed local port, and the gpt2 cases
run only when tiktoken already has the gpt2 BPE files cached.
"""

import hashlib
import io
import os
import pickle
import subprocess
import sys
import tempfile

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "data"))

import prepare_lib  # noqa: E402

CHAR = os.path.join(REPO, "data", "shakespeare_char", "prepare.py")
BPE = os.path.join(REPO, "data", "shakespeare", "prepare.py")
TEXT = os.path.join(REPO, "data", "text", "prepare.py")
SHAKESPEARE = os.path.join(REPO, "..", "shared", "data", "tinyshakespeare", "input.txt")

# 81 characters, 30 distinct; the first int(81 * 0.9) = 72 go to train
SMALL = "First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n"

# files of a small corpus, with multi-byte characters to cross chunk edges
CORPUS = {
    "b.txt": "Thou art  more lovely\nand more temperate:\n",
    "a.txt": "Café au lait, s'il vous plaît — naïve 日本語 🎭!\n",
    os.path.join("sub", "c.txt"): "Rough winds do shake\n\n the darling buds of May,\t\tand summer's lease\n",
    "notes.md": "not text: only .txt files are read\n",
}


def offline_env(**extra):
    """The current environment with every proxy set to a closed local port, so any download fails fast."""
    env = {k: v for k, v in os.environ.items() if k.lower() not in ("no_proxy", "all_proxy")}
    for key in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY"):
        env[key] = "http://127.0.0.1:9"
    env.update(extra)
    return env


def run(script, *args, cwd=REPO, env=None):
    return subprocess.run(
        [sys.executable, script, *args], cwd=cwd, env=env or offline_env(),
        capture_output=True, text=True, timeout=120,
    )


def run_ok(script, *args, **kwargs):
    result = run(script, *args, **kwargs)
    assert result.returncode == 0, result.stderr
    return result


def load(out_dir):
    train = np.fromfile(os.path.join(out_dir, "train.bin"), dtype=np.uint16)
    val = np.fromfile(os.path.join(out_dir, "val.bin"), dtype=np.uint16)
    with open(os.path.join(out_dir, "meta.pkl"), "rb") as f:
        meta = pickle.load(f)
    return train, val, meta


def decode(ids, meta):
    return "".join(meta["itos"][int(i)] for i in ids)


def write(path, text):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
    return str(path)


def make_corpus(tmp_path):
    folder = tmp_path / "corpus"
    for name, text in CORPUS.items():
        write(os.path.join(folder, name), text)
    return str(folder)


def corpus_split(val_fraction=0.1):
    """The expected split, done in one shot: each .txt file in sorted path order, cut at int(n * 0.9)."""
    parts = []
    for name in sorted(name for name in CORPUS if name.endswith(".txt")):
        text = CORPUS[name]
        k = int(len(text) * (1 - val_fraction))
        parts.append((text[:k], text[k:]))
    return parts


def gpt2_cached():
    """Whether tiktoken can build gpt2 without downloading (mirrors tiktoken.load's cache lookup)."""
    if "TIKTOKEN_CACHE_DIR" in os.environ:
        cache_dir = os.environ["TIKTOKEN_CACHE_DIR"]
    else:
        default = os.path.join(tempfile.gettempdir(), "data-gym-cache")
        cache_dir = os.environ.get("DATA_GYM_CACHE_DIR", default)
    base = "https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/"
    keys = [hashlib.sha1((base + name).encode()).hexdigest() for name in ("vocab.bpe", "encoder.json")]
    return bool(cache_dir) and all(os.path.exists(os.path.join(cache_dir, key)) for key in keys)


needs_shakespeare = pytest.mark.skipif(
    not os.path.exists(SHAKESPEARE), reason="../shared/data/tinyshakespeare/input.txt is absent"
)

needs_gpt2 = pytest.mark.skipif(
    not gpt2_cached(),
    reason="tiktoken's gpt2 BPE files are not cached (TIKTOKEN_CACHE_DIR or <tmp>/data-gym-cache) "
    "and these tests stay offline",
)


def gpt2():
    import tiktoken
    return tiktoken.get_encoding("gpt2")


# char level


@pytest.mark.slow
def test_char_small_text(tmp_path):
    src = write(tmp_path / "small.txt", SMALL)
    out = tmp_path / "out"
    result = run_ok(CHAR, "--input", src, "--out_dir", str(out))
    train, val, meta = load(out)
    assert meta["vocab_size"] == 30 and meta["tokenizer"] == "char"
    assert meta["itos"] == dict(enumerate(sorted(set(SMALL))))
    assert meta["stoi"] == {ch: i for i, ch in meta["itos"].items()}
    assert (len(train), len(val)) == (72, 9)
    assert decode(train, meta) + decode(val, meta) == SMALL
    assert "vocab size: 30" in result.stdout
    assert "train has 72 tokens" in result.stdout and "val has 9 tokens" in result.stdout
    assert sorted(os.listdir(out)) == ["meta.pkl", "train.bin", "val.bin"]


@pytest.mark.slow
def test_generic_char_matches_shakespeare_char(tmp_path):
    src = write(tmp_path / "small.txt", SMALL)
    run_ok(CHAR, "--input", src, "--out_dir", str(tmp_path / "a"))
    run_ok(TEXT, "--input", src, "--out_dir", str(tmp_path / "b"), "--tokenizer", "char")
    for name in ("train.bin", "val.bin", "meta.pkl"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


@pytest.mark.slow
def test_char_folder_streams_in_small_chunks(tmp_path):
    folder = make_corpus(tmp_path)
    small = ["--tokenizer", "char", "--chunk_chars", "3"]
    run_ok(TEXT, "--input", folder, "--out_dir", str(tmp_path / "small"), *small)
    run_ok(TEXT, "--input", folder, "--out_dir", str(tmp_path / "big"), "--tokenizer", "char")
    train, val, meta = load(tmp_path / "small")
    parts = corpus_split()
    chars = sorted(set("".join(text for name, text in CORPUS.items() if name.endswith(".txt"))))
    assert meta["vocab_size"] == len(chars) == 40
    assert meta["itos"] == dict(enumerate(chars))
    assert (len(train), len(val)) == (138, 17)
    assert decode(train, meta) == "".join(t for t, _ in parts)
    assert decode(val, meta) == "".join(v for _, v in parts)
    for name in ("train.bin", "val.bin", "meta.pkl"):
        assert (tmp_path / "small" / name).read_bytes() == (tmp_path / "big" / name).read_bytes()


@pytest.mark.slow
def test_val_fraction(tmp_path):
    src = write(tmp_path / "small.txt", SMALL)
    run_ok(TEXT, "--input", src, "--out_dir", str(tmp_path), "--tokenizer", "char", "--val_fraction", "0.25")
    train, val, meta = load(tmp_path)
    assert (len(train), len(val)) == (60, 21)  # int(81 * 0.75) = 60
    assert decode(val, meta) == SMALL[60:]


@pytest.mark.parametrize("script", [CHAR, TEXT])
@pytest.mark.slow
def test_runs_from_its_own_folder(tmp_path, script):
    src = write(tmp_path / "small.txt", SMALL)
    extra = ["--tokenizer", "char"] if script == TEXT else []
    out = str(tmp_path / "out")
    run_ok("prepare.py", "--input", src, "--out_dir", out, *extra, cwd=os.path.dirname(script))
    train, val, meta = load(tmp_path / "out")
    assert decode(train, meta) + decode(val, meta) == SMALL


@needs_shakespeare
@pytest.mark.slow
def test_tiny_shakespeare_char(tmp_path):
    result = run_ok(CHAR, "--input", SHAKESPEARE, "--out_dir", str(tmp_path))
    train, val, meta = load(tmp_path)
    assert meta["vocab_size"] == 65
    assert (len(train), len(val)) == (1003854, 111540)
    assert "train has 1,003,854 tokens" in result.stdout
    with open(SHAKESPEARE, encoding="utf-8") as f:
        assert decode(val, meta) == f.read()[1003854:]


# gpt2 BPE


@needs_gpt2
@pytest.mark.slow
def test_gpt2_small_text(tmp_path):
    src = write(tmp_path / "small.txt", SMALL)
    run_ok(BPE, "--input", src, "--out_dir", str(tmp_path / "out"))
    train, val, meta = load(tmp_path / "out")
    assert meta == {"vocab_size": 50257, "tokenizer": "gpt2"}
    enc = gpt2()
    assert train.tolist() == enc.encode_ordinary(SMALL[:72])
    assert val.tolist() == enc.encode_ordinary(SMALL[72:])


@needs_gpt2
@pytest.mark.slow
def test_gpt2_folder_streams_in_small_chunks(tmp_path):
    folder = make_corpus(tmp_path)
    run_ok(TEXT, "--input", folder, "--out_dir", str(tmp_path), "--tokenizer", "gpt2", "--chunk_chars", "5")
    train, val, meta = load(tmp_path)
    enc = gpt2()
    assert meta == {"vocab_size": 50257, "tokenizer": "gpt2"}
    assert train.tolist() == [i for t, _ in corpus_split() for i in enc.encode_ordinary(t)]
    assert val.tolist() == [i for _, v in corpus_split() for i in enc.encode_ordinary(v)]


@needs_gpt2
@needs_shakespeare
@pytest.mark.slow
def test_tiny_shakespeare_gpt2(tmp_path):
    run_ok(BPE, "--input", SHAKESPEARE, "--out_dir", str(tmp_path))
    train, val, _ = load(tmp_path)
    assert (len(train), len(val)) == (301966, 36059)  # nanoGPT's data/shakespeare numbers


def test_bpe_chunking_keeps_tokens():
    """Streaming BPE cuts only where gpt2's pre-tokenizer splits: gpt2's real regex, toy merges."""
    tiktoken = pytest.importorskip("tiktoken")
    from tiktoken_ext.openai_public import r50k_pat_str

    ranks = {bytes([b]): b for b in range(256)}
    for merge in (b"  ", b" a", b"a ", b"\n\n", b" \n", b"ab", b"b ", b"'s", b"\t\t"):
        ranks[merge] = len(ranks)
    enc = tiktoken.Encoding(name="toy", pat_str=r50k_pat_str, mergeable_ranks=ranks, special_tokens={})
    rng = np.random.default_rng(0)
    atoms = [" ", "  ", "\n", "\n\n", "\t", " \n", "a", "ab", "b", "12", "!?", "'s", "\u00a0", "\u3000", "é"]
    texts = ["".join(rng.choice(atoms, 500)), "ab ab  ab\n\n", "   ", "abab", " a", "a "]
    for text in texts:
        for chunk_chars in (1, 2, 3, 7, 1000):
            pieces = prepare_lib.read_pieces(io.StringIO(text), len(text), chunk_chars)
            tokens = [int(i) for arr in prepare_lib.gpt2_encoder(enc)(pieces) for i in arr]
            assert tokens == enc.encode_ordinary(text), (text[:20], chunk_chars)


def test_safe_cut():
    assert prepare_lib.safe_cut("hello world") == 5
    assert prepare_lib.safe_cut("a  b  ") == 4
    assert prepare_lib.safe_cut("a\nb\n") == 3
    assert prepare_lib.safe_cut("  nospace") == 0
    assert prepare_lib.safe_cut("") == 0


@pytest.mark.slow
def test_gpt2_not_cached_is_a_clear_error(tmp_path):
    src = write(tmp_path / "small.txt", SMALL)
    empty_cache = tmp_path / "cache"
    empty_cache.mkdir()
    env = offline_env(TIKTOKEN_CACHE_DIR=str(empty_cache))
    result = run(BPE, "--input", src, "--out_dir", str(tmp_path / "out"), env=env)
    assert result.returncode != 0
    assert "error: could not load tiktoken's gpt2 encoding" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists()


# errors and downloads


def check_error(result, message):
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    assert f"error: {message}" in result.stderr, result.stderr


@pytest.mark.slow
def test_missing_input_path(tmp_path):
    missing = str(tmp_path / "nope")
    check_error(run(TEXT, "--input", missing, "--out_dir", str(tmp_path), "--tokenizer", "char"),
                f"input path {missing} does not exist")
    check_error(run(CHAR, "--input", missing, "--out_dir", str(tmp_path)), f"--input {missing} is not a file")


@pytest.mark.slow
def test_folder_without_txt_files(tmp_path):
    folder = tmp_path / "corpus"
    write(folder / "readme.md", "no txt here")
    check_error(run(TEXT, "--input", str(folder), "--out_dir", str(tmp_path), "--tokenizer", "char"),
                f"no .txt files in folder {folder}")


@pytest.mark.slow
def test_empty_text(tmp_path):
    folder = tmp_path / "corpus"
    write(folder / "a.txt", "")
    write(folder / "b" / "c.txt", "")
    check_error(run(TEXT, "--input", str(folder), "--out_dir", str(tmp_path), "--tokenizer", "char"),
                "the input holds no text")


@pytest.mark.slow
def test_text_too_short_to_split(tmp_path):
    src = write(tmp_path / "short.txt", "hi\n")  # int(3 * 0.5) = 1 train character, 2 val
    half = ["--tokenizer", "char", "--val_fraction", "0.5"]
    run_ok(TEXT, "--input", src, "--out_dir", str(tmp_path / "ok"), *half)
    src = write(tmp_path / "one.txt", "x")  # int(1 * 0.9) = 0 train characters
    check_error(run(TEXT, "--input", src, "--out_dir", str(tmp_path), "--tokenizer", "char"),
                "too little text (1 characters) to split with val_fraction 0.1")


@pytest.mark.slow
def test_bad_val_fraction(tmp_path):
    src = write(tmp_path / "small.txt", SMALL)
    args = ["--out_dir", str(tmp_path), "--tokenizer", "char", "--val_fraction", "1"]
    result = run(TEXT, "--input", src, *args)
    check_error(result, "val_fraction must be between 0 and 1, got 1.0")


@pytest.mark.slow
def test_vocab_too_big_for_uint16(tmp_path):
    src = write(tmp_path / "wide.txt", "".join(map(chr, range(0x10000, 0x20000))))
    check_error(run(TEXT, "--input", src, "--out_dir", str(tmp_path), "--tokenizer", "char"),
                "65536 distinct characters, more than a uint16 token id can hold (65535)")


@pytest.mark.slow
def test_not_utf8(tmp_path):
    src = tmp_path / "latin1.txt"
    src.write_bytes("café\n".encode("latin-1"))
    check_error(run(TEXT, "--input", str(src), "--out_dir", str(tmp_path), "--tokenizer", "char"),
                f"{src} is not UTF-8 text")


@pytest.mark.parametrize("script", [CHAR, BPE])
@pytest.mark.slow
def test_offline_without_input_asks_for_it(tmp_path, script):
    result = run(script, "--out_dir", str(tmp_path))
    check_error(result, "could not download https://raw.githubusercontent.com/karpathy/char-rnn/")
    assert "pass --input FILE" in result.stderr
    assert result.stderr.count("error:") == 1
    assert os.listdir(tmp_path) == []


def test_download_writes_the_file(tmp_path):
    src = write(tmp_path / "src.txt", SMALL)
    dest = str(tmp_path / "input.txt")
    prepare_lib.download("file://" + src, dest)
    with open(dest, encoding="utf-8") as f:
        assert f.read() == SMALL
    with pytest.raises(prepare_lib.PrepareError, match="could not download"):
        prepare_lib.download("file://" + str(tmp_path / "missing.txt"), str(tmp_path / "other.txt"))
    assert sorted(os.listdir(tmp_path)) == ["input.txt", "src.txt"]
