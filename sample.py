"""
Sample from a trained model, grown ones included: the checkpoint alone says what the model is.

$ python sample.py --out_dir=out-shakespeare-char-cpu --device=cpu

Without --device it samples on cuda, or on cpu (saying so) where this torch sees no CUDA device.
"""

import os
import pickle
import sys
from contextlib import nullcontext

import torch

from checkpoint import load_checkpoint
from configurator import ConfigError, UserError, configure, help_requested, key_comments, print_help
from model import GPT

# -----------------------------------------------------------------------------
out_dir = 'out'  # the checkpoint {out_dir}/ckpt.pt
start = "\n"  # or "<|endoftext|>" or etc. can also specify a file, use as: "FILE:prompt.txt"
num_samples = 10  # number of samples to draw
max_new_tokens = 500  # number of tokens generated in each sample
temperature = 0.8  # 1.0 = no change, < 1.0 = less random, > 1.0 = more random, in predictions
top_k = 200  # retain only the top_k most likely tokens, clamp others to have 0 probability
seed = 1337
device = 'cuda'  # examples: 'cpu', 'cuda', 'cuda:0', 'cuda:1', etc.; not given and no CUDA: cpu
dtype = ('bfloat16' if torch.cuda.is_bf16_supported() else 'float16') if torch.cuda.is_available() else 'float32'
compile = False  # use PyTorch 2.0 to compile the model to be faster
config_keys = [k for k, v in globals().items() if not k.startswith('_') and isinstance(v, (int, float, bool, str))]
# -----------------------------------------------------------------------------


def codec(checkpoint):
    """(encode, decode) from the run's meta.pkl: characters, UTF-8 bytes (invalid UTF-8 decodes to
    replacement characters), or GPT-2 BPE through tiktoken."""
    config = checkpoint['config']
    path = os.path.join(config['data_dir'] or os.path.join('data', config['dataset']), 'meta.pkl')
    if not os.path.isfile(path):
        raise UserError(f"{path} not found: sample.py decodes with the meta.pkl of the run's data")
    with open(path, 'rb') as f:
        meta = pickle.load(f)
    if meta.get('tokenizer') == 'gpt2':
        import tiktoken
        enc = tiktoken.get_encoding('gpt2')
        return (lambda s: enc.encode(s, allowed_special={"<|endoftext|>"})), enc.decode
    if meta.get('tokenizer') == 'bytes':
        return (lambda s: list(s.encode('utf-8'))), (lambda tokens: bytes(tokens).decode('utf-8', errors='replace'))
    stoi, itos = meta['stoi'], meta['itos']
    return (lambda s: [stoi[c] for c in s]), (lambda tokens: ''.join(itos[i] for i in tokens))


def check_sampling(temperature, top_k):
    """Refuse a temperature or top_k that model.generate cannot sample with."""
    if not temperature > 0:
        raise UserError(f"temperature: expected a number > 0, got {temperature} (the logits are divided by it; "
                        "for greedy sampling use --top_k=1)")
    if top_k < 1:
        raise UserError(f"top_k: expected an integer >= 1, got {top_k} (1 samples greedily; a top_k of the "
                        "vocabulary size or more keeps every token)")


def sampling_device(device, given):
    """The device to sample on: cpu, with a note, when cuda was only the default and this torch sees no CUDA."""
    if not device.startswith('cuda') or torch.cuda.is_available():
        return device
    if given:
        raise UserError(f"device: {device!r}, but this torch sees no CUDA device; sample with --device=cpu")
    print("no CUDA device: sampling on cpu")
    return 'cpu'


def main():
    torch.manual_seed(seed)
    torch.cuda.manual_seed(seed)
    device_type = 'cuda' if 'cuda' in device else 'cpu'
    ptdtype = {'float32': torch.float32, 'bfloat16': torch.bfloat16, 'float16': torch.float16}[dtype]
    ctx = nullcontext() if dtype == 'float32' else torch.amp.autocast(device_type=device_type, dtype=ptdtype)

    path = os.path.join(out_dir, 'ckpt.pt')
    if not os.path.isfile(path):
        raise UserError(f"out_dir: no checkpoint at {path}")
    checkpoint = load_checkpoint(path, ('model', 'model_args', 'config'))
    encode, decode = codec(checkpoint)
    model = GPT.from_checkpoint(checkpoint).to(device)
    model.eval()
    if compile:
        model = torch.compile(model)

    prompt = start
    if start.startswith('FILE:'):
        try:
            with open(start[5:], encoding='utf-8') as f:
                prompt = f.read()
        except (OSError, UnicodeDecodeError) as e:
            raise UserError(f"start: cannot read the prompt file {start[5:]}: {e}") from None
    try:
        start_ids = encode(prompt)
    except KeyError as e:
        raise UserError(f"start: the character {e} is not in the vocabulary") from None
    x = torch.tensor(start_ids, dtype=torch.long, device=device)[None, ...]
    with torch.no_grad(), ctx:
        for _ in range(num_samples):
            y = model.generate(x, max_new_tokens, temperature=temperature, top_k=top_k)
            print(decode(y[0].tolist()))
            print('---------------')


if __name__ == '__main__':
    defaults = {k: globals()[k] for k in config_keys}
    if help_requested(sys.argv[1:]):
        print_help("usage: python sample.py [--key=value ...]", defaults, key_comments(__file__))
        sys.exit(0)
    try:
        globals().update(configure(sys.argv[1:], defaults))
        check_sampling(temperature, top_k)
        device = sampling_device(device, given=any(arg.startswith('--device=') for arg in sys.argv[1:]))
        main()
    except (UserError, ConfigError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
