# the growth recipe for the CPU testbed: it ends as the CPU recipe's model (4 layers x 128, mlp 512)
# but trains 1 layer for 8000 iters and grows it to 4 by masked growth for the last 441 (configs/
# shakespeare_char_cpu_growth.yaml), under a warmup-stable-decay lr schedule. 8441 iters use half the
# training FLOPs of 5000 iters of the 4-layer model (the reference in bench_growth.py); see
# docs/growth_recipes.md for the recipes measured (on this testbed growing late pays most).
#
# $ python train.py config/train_shakespeare_char_cpu_growth.py
# $ python bench_growth.py   # growth vs static-large at matched compute, each on its own schedule

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

# the starting model; the schedule grows it to 4 layers
n_layer = 1
n_head = 4
n_embd = 128
n_hidden = 512
dropout = 0.0

learning_rate = 1e-3
lr_schedule = 'wsd'  # warmup 100, the peak until the last fifth, then a 1 - sqrt cooldown to min_lr
max_iters = 8441
lr_decay_iters = 8441
min_lr = 1e-4
beta2 = 0.99
warmup_iters = 100

device = 'cpu'
dtype = 'float32'  # 'bfloat16' runs under cpu autocast, but about 10x slower at the CPU recipe's size (docs/benchmarks.md)
compile = False

scaling_schedule_file = 'configs/shakespeare_char_cpu_growth.yaml'
