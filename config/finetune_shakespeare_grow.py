# fine-tune GPT-2 124M on tiny shakespeare (GPT-2 BPE) and grow it while it fine-tunes, like nanoGPT's
# config/finetune_shakespeare.py plus a schedule (configs/finetune_shakespeare_grow.yaml): after 10 iters
# every layer gets a copy right after it (12 -> 24 layers, ~209M parameters) by masked stacking, so the
# network is unchanged when the copies enter and they blend in over 10 iters; the last 20 iters train
# the grown model. UNTESTED: it needs the GPT-2 weights (downloaded by transformers) and a GPU; it has
# been validated (--dry_run=True) against GPT-2 124M's config only.
#
# $ pip install -r requirements-hf.txt
# $ python data/shakespeare/prepare.py
# $ python train.py config/finetune_shakespeare_grow.py
# $ python export_hf.py --out_dir=out-shakespeare-finetune-grow --hf_dir=hf-shakespeare-grow
#
# expected cost: 40 iters x 32,768 tokens, ~1.7e15 training flops by the event log's count (0.85 GFLOPs
# a token at 12 layers, 1.48 at 24), i.e. well under a minute of compute on one A100 at 40% MFU; with the
# download, torch.compile (again after the op and after the fold) and evals, a few minutes. An estimate
# from the flop count, not a measurement: no GPU was at hand.

out_dir = 'out-shakespeare-finetune-grow'
eval_interval = 10
eval_iters = 40
log_interval = 1
wandb_log = False
wandb_project = 'shakespeare'
wandb_run_name = 'gpt2-ft-grow'

dataset = 'shakespeare'
init_from = 'gpt2'  # the weights fix the shape: no n_layer / n_head / n_embd / bias here
# a checkpoint after every eval, so the last one is the grown model once its mask has folded (export_hf.py
# refuses a checkpoint taken mid-ramp)
always_save_checkpoint = True

# 1 batch_size * 32 grad_accum * 1024 tokens = 32,768 tokens/iter; shakespeare has 301,966 train tokens,
# so 1 epoch ~= 9.2 iters and the run sees ~4.3 epochs
batch_size = 1
gradient_accumulation_steps = 32
max_iters = 40

# fine-tune at a constant lr, as nanoGPT does
learning_rate = 3e-5
decay_lr = False

scaling_schedule_file = 'configs/finetune_shakespeare_grow.yaml'
