"""
Reading and writing train.py's checkpoints (ckpt.pt), for train.py and the scripts that read its runs
(sample.py, export_hf.py, bench.py): written atomically, read with one clear error when a file is
missing, unreadable or lacks a key its reader needs.
"""

import os

import torch

from configurator import UserError


def save_checkpoint(checkpoint, path):
    """Atomic: write a temp file, then rename over the old one; a crash mid-write leaves the old file."""
    tmp = path + '.tmp'
    torch.save(checkpoint, tmp)
    os.replace(tmp, path)


def load_checkpoint(path, required_keys=(), mmap=False):
    """The checkpoint at path (tensors on the cpu), or a UserError naming the file and what is wrong.
    mmap=True maps the tensors instead of reading them: quick, for a look at the settings and counters."""
    if not os.path.isfile(path):
        raise UserError(f"no checkpoint at {path}")
    try:
        checkpoint = torch.load(path, map_location='cpu', weights_only=True, mmap=mmap)
        missing = [k for k in required_keys if k not in checkpoint]
    except Exception as e:
        raise UserError(f"{path}: not a readable checkpoint (truncated or corrupted?): "
                        f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from None
    if missing:
        raise UserError(f"{path}: not a checkpoint of this train.py: missing '{missing[0]}'")
    return checkpoint
