# a LoRA curriculum on the CPU recipe's model (ReLoRA-like): the attention projections and the
# token embedding train through low-rank adapters that are merged into the main weights from time
# to time, the rank grows, and at the end LoRA is removed and the full weights train.
# see configs/lora_curriculum_example.yaml
exec(open('config/train_shakespeare_char_cpu.py').read())

out_dir = 'out-shakespeare-char-cpu-lora'
attn_lora_rank = 8
embedding_lora_rank = 4
lora_alpha = 16.0
# the schedule restarts the lr schedule at iter 500 (warmup 100, decay over lr_decay_iters 2000 from there)
# and removes LoRA by iter 2000 at the latest: 2500 iters let the decay finish, the full weights train last
max_iters = 2500
scaling_schedule_file = 'configs/lora_curriculum_example.yaml'
