# nanoGPT's CPU recipe for the character-level shakespeare model: the GPU recipe
# (config/train_shakespeare_char.py) shrunk to 4 layers x 128 wide, context 64, batch 12,
# 2000 iters, no dropout, no compile. 1 min 46 s on an otherwise idle 2-core machine, val loss 1.9150
# (`time python train.py config/train_shakespeare_char_cpu.py`, docs/benchmarks.md).

out_dir = 'out-shakespeare-char-cpu'
eval_interval = 250
eval_iters = 20
log_interval = 1
always_save_checkpoint = False

wandb_log = False
wandb_project = 'shakespeare-char'
wandb_run_name = 'mini-gpt-cpu'

dataset = 'shakespeare_char'
gradient_accumulation_steps = 1
batch_size = 12
block_size = 64

n_layer = 4
n_head = 4
n_embd = 128
dropout = 0.0

learning_rate = 1e-3
max_iters = 2000
lr_decay_iters = 2000
min_lr = 1e-4
beta2 = 0.99
warmup_iters = 100

device = 'cpu'
dtype = 'float32'  # 'bfloat16' runs under cpu autocast, but about 10x slower here (1820 vs 190 ms/iter, docs/benchmarks.md)
compile = False
