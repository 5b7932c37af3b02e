# GPT-2 124M (12 layers x 768, mlp 3072) on a generic corpus, grown from 6 layers with a half-width
# mlp by masked structural growth (configs/gpt2_growth.yaml). UNTESTED at this scale: it has been
# validated (--dry_run=True) and run on CPU at toy sizes only, never on GPUs.
#
# make the data from any folder of .txt files (streamed, GPT-2 BPE):
# $ python data/text/prepare.py --input /path/to/corpus --out_dir data/corpus --tokenizer gpt2
# then on one node of 8 GPUs:
# $ torchrun --standalone --nproc_per_node=8 train.py config/train_gpt2_growth.py

out_dir = 'out-gpt2-growth'
wandb_log = False
wandb_project = 'gpt2-growth'
wandb_run_name = 'gpt2-124M-growth'

data_dir = 'data/corpus'
# nanoGPT's GPT-2 batch: 12 batch size * 1024 block size * 40 grad accum = ~0.5M tokens per iter
batch_size = 12
block_size = 1024
gradient_accumulation_steps = 5 * 8

# the starting model: 6 layers, mlp 1536 (half of 4 * 768); the schedule grows it to GPT-2 124M
n_layer = 6
n_head = 12
n_embd = 768
n_hidden = 1536
dropout = 0.0
bias = False

# nanoGPT's GPT-2 schedule: 600k iters would be ~300B tokens; a growth run is meant to need fewer
max_iters = 600000
lr_decay_iters = 600000
warmup_iters = 2000
learning_rate = 6e-4
min_lr = 6e-5
weight_decay = 1e-1

eval_interval = 1000
eval_iters = 200
log_interval = 10

scaling_schedule_file = 'configs/gpt2_growth.yaml'
