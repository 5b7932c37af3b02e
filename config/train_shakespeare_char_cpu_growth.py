# the growth recipe for the CPU testbed: it ends as the CPU recipe's model (4 layers x 128,
# mlp 512) but starts with 1 layer and a narrow mlp, and grows (stacking, Net2Net widening)
# following configs/shakespeare_char_cpu_growth.yaml. 5000 iters with lr decay to 5000, where
# model capacity starts to matter on tiny shakespeare (see README: "growth vs static").
#
# $ python train.py config/train_shakespeare_char_cpu_growth.py
# $ python bench_growth.py   # growth vs static-large (4 x 128 from scratch) vs static-small

out_dir = 'out-shakespeare-char-cpu-growth'
eval_interval = 250
eval_iters = 20
log_interval = 50
always_save_checkpoint = True

wandb_log = False
wandb_project = 'shakespeare-char'
wandb_run_name = 'cpu-growth'

dataset = 'shakespeare_char'
gradient_accumulation_steps = 1
batch_size = 12
block_size = 64

# the starting model; the schedule grows it to 4 layers and n_hidden 512
n_layer = 1
n_head = 4
n_embd = 128
n_hidden = 256
dropout = 0.0

learning_rate = 1e-3
lr_schedule = 'wsd'  # growth in the stable phase meets the peak lr
max_iters = 5000
lr_decay_iters = 5000
min_lr = 1e-4
beta2 = 0.99
warmup_iters = 100

device = 'cpu'
compile = False

scaling_schedule_file = 'configs/shakespeare_char_cpu_growth.yaml'
