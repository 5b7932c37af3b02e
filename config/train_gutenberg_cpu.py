# the data-rich CPU testbed: Project Gutenberg books as bytes (data/gutenberg/prepare.py), a 4-layer
# x 64 model, context 128, batch 8, under a warmup-stable-decay lr schedule. 12000 iters are F_ref,
# 2.05e13 training FLOPs and 12.3M training bytes (an eighth of the train split, so no byte is read
# twice at any budget of bench_growth.py); the lr comes from the sweep in docs/growth_recipes.md.
#
# $ python data/gutenberg/prepare.py --input ../shared/data/gutenberg   # offline; without --input it downloads
# $ python train.py config/train_gutenberg_cpu.py

out_dir = 'out-gutenberg-cpu'
eval_interval = 500
eval_iters = 50
log_interval = 100
always_save_checkpoint = True

wandb_log = False
wandb_project = 'gutenberg'
wandb_run_name = 'cpu'

dataset = 'gutenberg'
gradient_accumulation_steps = 1
batch_size = 8
block_size = 128

n_layer = 4
n_head = 4
n_embd = 64
n_hidden = 256
dropout = 0.0

learning_rate = 4e-3  # the 4-layer sweep at 0.5 x F_ref: 0.002 / 0.004 / 0.008 -> 1.7636 / 1.7267 / 1.7415
lr_schedule = 'wsd'  # warmup, the peak lr until the last fifth, then a 1 - sqrt cooldown to min_lr
max_iters = 12000
lr_decay_iters = 12000
min_lr = 4e-4
beta2 = 0.99
warmup_iters = 200

device = 'cpu'
dtype = 'float32'
compile = False
