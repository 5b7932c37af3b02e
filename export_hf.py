"""
Export a run's checkpoint as a Hugging Face GPT-2 folder: a GPT2LMHeadModel (config.json and
model.safetensors) that transformers' generate, lm-evaluation-harness and the hub can read. A rope model
(pos_emb='rope') is written as a GPTNeoXForCausalLM instead: GPT-NeoX has rotary embeddings in the same
layout, and with use_parallel_residual=False its block is ours (LayerNorm, GELU, one residual after another).

$ python export_hf.py --out_dir=out-shakespeare-finetune-grow --hf_dir=hf-shakespeare-grown

LoRA adapters are merged into the weights on the way out. A grown model exports as long as GPT-2 can
express it: any depth and MLP width (written as n_inner), but no MSG mask still rising and no
attention width other than n_embd. For a run on GPT-2 BPE, the tokenizer files are copied in when
they are at hand locally (tokenizer_dir, the folder the run was imported from, or the Hugging Face
cache); nothing is downloaded. Needs transformers: pip install -r requirements-hf.txt
"""

import os
import pickle
import sys

import torch

from checkpoint import load_checkpoint
from configurator import ConfigError, UserError, configure, help_requested, key_comments, print_help
from model import GPT, HF_ACTIVATION_NAMES, import_transformers

# -----------------------------------------------------------------------------
out_dir = 'out'  # the run: {out_dir}/ckpt.pt
hf_dir = ''  # the folder to write (created if needed)
tokenizer_dir = ''  # a folder with GPT-2 tokenizer files; '' = the run's init_from folder, then the HF cache
config_keys = [k for k, v in globals().items() if not k.startswith('_') and isinstance(v, (int, float, bool, str))]
# -----------------------------------------------------------------------------
GPT2_EOS = 50256  # <|endoftext|> in GPT-2 BPE


def run_tokenizer(checkpoint):
    """What the run's meta.pkl says its tokens are: 'gpt2', 'char', or None when it cannot be read."""
    config = checkpoint['config']
    path = os.path.join(config['data_dir'] or os.path.join('data', config['dataset']), 'meta.pkl')
    try:
        with open(path, 'rb') as f:
            return pickle.load(f).get('tokenizer')
    except (OSError, pickle.UnpicklingError, EOFError):
        return None


def has_tokenizer_files(folder):
    # transformers reads a GPT-2 tokenizer from tokenizer.json, or from vocab.json and merges.txt
    return any(all(os.path.isfile(os.path.join(folder, name)) for name in names)
               for names in (('tokenizer.json',), ('vocab.json', 'merges.txt')))


def find_gpt2_tokenizer(checkpoint, vocab_size, given):
    """(tokenizer, where it came from) from local files only: the folder given, else the folder the run
    was imported from, else the Hugging Face cache of 'gpt2'; or (None, why not)."""
    transformers = import_transformers()
    if given and not has_tokenizer_files(given):
        raise UserError(f"tokenizer_dir: no tokenizer files in {given} "
                              "(tokenizer.json, or vocab.json and merges.txt)")
    init_from = checkpoint['config']['init_from']
    if given:
        sources = [given]
    else:
        sources = ([init_from] if has_tokenizer_files(init_from) else []) + ['gpt2']
    for source in sources:
        try:
            tokenizer = transformers.GPT2TokenizerFast.from_pretrained(source, local_files_only=True)
        except (OSError, ValueError) as e:
            if given:
                raise UserError(f"tokenizer_dir: {given}: {str(e).strip().splitlines()[0]}") from None
            continue
        if len(tokenizer) > vocab_size:
            raise UserError(f"the tokenizer in {source} has {len(tokenizer)} tokens, more than the model's "
                                  f"vocabulary of {vocab_size}")
        return tokenizer, source
    return None, ("no GPT-2 tokenizer files at hand (none in the run's init_from folder nor in the Hugging Face "
                  "cache of 'gpt2'); pass --tokenizer_dir=FOLDER, or copy them into the export")


def exportable_model(checkpoint, path):
    """The checkpoint's model with its LoRA adapters merged, or a UserError saying why GPT-2 (GPT-NeoX for
    a rope model) cannot hold it and what to do."""
    model = GPT.from_checkpoint(checkpoint)
    for target in ('attn', 'embedding'):
        model.set_lora_rank(target, 0, torch.Generator())  # merges the adapter into the weight
    try:
        model.hf_config_args()
    except ValueError as e:
        ramp = checkpoint['orchestrator']['active_ramp']
        if ramp is not None:
            advice = (f"train on until the {ramp['name']} mask reaches 1 at iter "
                      f"{ramp['start_iter'] + ramp['anneal_iters']} (init_from='resume' with max_iters at least "
                      "that; the ramp then folds away) and export that checkpoint")
        else:
            advice = ("msg_add_heads and msg_widen_embd make it so; such a model runs with this repository's "
                      "sample.py only, a model to export grows by the other operations")
        raise UserError(f"{path}: cannot export the model of iter {checkpoint['iter_num']}: {e}; {advice}") \
            from None
    return model.eval()


def export(run_dir, folder, tokenizer_from=''):
    """Write the run's model (and tokenizer, see find_gpt2_tokenizer) into folder as a GPT2LMHeadModel
    (GPTNeoXForCausalLM for a rope model). Everything is checked before anything is written."""
    try:
        import_transformers()
    except ImportError as e:
        raise UserError(str(e)) from None
    path = os.path.join(run_dir, 'ckpt.pt')
    if not os.path.isfile(path):
        raise UserError(f"out_dir: no checkpoint at {path}")
    checkpoint = load_checkpoint(path, ('model', 'model_args', 'config', 'iter_num', 'orchestrator'))
    model = exportable_model(checkpoint, path)
    vocab_size = model.config.vocab_size
    tokens = run_tokenizer(checkpoint)
    tokenizer = None
    if tokens == 'gpt2':
        tokenizer, where = find_gpt2_tokenizer(checkpoint, vocab_size, tokenizer_from)
        note = f"GPT-2 BPE from {where}" if tokenizer is not None else f"not written, {where}"
    elif tokenizer_from:
        raise UserError(f"tokenizer_dir: the run's tokens are {tokens or 'unknown (no meta.pkl)'}, "
                              "not GPT-2 BPE, so a GPT-2 tokenizer does not belong with it")
    else:
        note = f"not written (the run's tokens are {tokens or 'unknown: no meta.pkl'}, not GPT-2 BPE)"
    eos = GPT2_EOS if tokens == 'gpt2' and vocab_size > GPT2_EOS else None
    hf_model = model.to_hf(bos_token_id=eos, eos_token_id=eos)

    os.makedirs(folder, exist_ok=True)
    hf_model.save_pretrained(folder)
    if tokenizer is not None:
        tokenizer.save_pretrained(folder)
    c = model.config
    rotary = f" (rotary, base {c.rope_base:g})" if c.pos_emb == 'rope' else ''
    print(f"wrote {folder}: {type(hf_model).__name__}, n_layer {c.n_layer}, n_head {c.n_head}, n_embd {c.n_embd}, "
          f"n_inner {c.n_hidden}, vocab {vocab_size}, positions {c.block_size}{rotary}, activation "
          f"{HF_ACTIVATION_NAMES[c.activation]}, {model.get_num_params() / 1e6:.2f}M parameters, "
          f"from iter {checkpoint['iter_num']}")
    print(f"tokenizer: {note}")


if __name__ == '__main__':
    defaults = {k: globals()[k] for k in config_keys}
    if help_requested(sys.argv[1:]):
        print_help("usage: python export_hf.py --out_dir=RUN --hf_dir=FOLDER [--key=value ...]", defaults,
                   key_comments(__file__))
        sys.exit(0)
    try:
        globals().update(configure(sys.argv[1:], defaults))
        if not hf_dir:
            raise UserError("hf_dir: give the folder to write, e.g. --hf_dir=hf-model")
        export(out_dir, hf_dir, tokenizer_dir)
    except (UserError, ConfigError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
