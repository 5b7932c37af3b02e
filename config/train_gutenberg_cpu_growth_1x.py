# the Gutenberg growth recipe (config/train_gutenberg_cpu_growth.py) on the full budget: 2 layers for 9500
# iters, G_stack to 4 layers for the last 6971, 1.0 x F_ref exactly (so that bench_growth.py compares it
# with the ladder's own 1.0 x F_ref runs, nothing new to train for the static sizes). Reported seed 11:
# 0.96x the envelope (docs/growth_vs_envelope_24.md); its static runs are the two-jump benchmark's:
#
# $ python bench_growth.py --config=config/train_gutenberg_cpu_growth_1x.py --sizes=config/gutenberg_cpu_sizes.yaml \
#       --ladder=0.25,0.5,1.0,2.0 --ref_iters=12000 --ref_size=4x64 --lr_factors=0.5,1,2 --final_eval_iters=500 \
#       --extra_text=../shared/data/tinyshakespeare/input.txt --jobs=2 --reuse --report=docs/growth_vs_envelope_24 --seeds=11

exec(open('config/train_gutenberg_cpu_growth.py').read())

out_dir = 'out-gutenberg-cpu-growth-1x'
wandb_run_name = 'cpu-growth-1x'

max_iters = 16471  # 1.0 x F_ref: 9500 iters of 2 layers, 6971 of 4
lr_decay_iters = 16471

scaling_schedule_file = 'configs/gutenberg_cpu_growth_1x.yaml'
