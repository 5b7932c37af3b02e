# two jumps along the Gutenberg envelope, 2 -> 4 -> 8 layers (configs/gutenberg_cpu_growth_248.yaml), on
# 1.4 x F_ref: the best recipe of issue 23's probes on tuning seed 4 (val 1.5331 on the 500-batch final
# eval, 1.12x the best static model of that seed; every probe in docs/growth_recipes.md). Reported seed
# 11: 1.09x the envelope, 1.12x the same size (docs/growth_vs_envelope_248.md). Its benchmark shares F_ref
# (12000 iters of 4 x 64) and the static runs with the 2 -> 4 recipe's:
#
# $ python train.py config/train_gutenberg_cpu_growth_248.py
# $ python bench_growth.py --config=config/train_gutenberg_cpu_growth_248.py --sizes=config/gutenberg_cpu_sizes.yaml \
#       --ladder=0.25,0.5,1.0,2.0 --ref_iters=12000 --ref_size=4x64 --lr_factors=0.5,1,2 --final_eval_iters=500 \
#       --extra_text=../shared/data/tinyshakespeare/input.txt --jobs=2 --reuse --report=docs/growth_vs_envelope_248 --seeds=11

exec(open('config/train_gutenberg_cpu_growth.py').read())

out_dir = 'out-gutenberg-cpu-growth-248'
wandb_run_name = 'cpu-growth-248'

max_iters = 15685  # 1.4 x F_ref: 7000 iters of 2 layers, 4000 of 4, 4685 of 8
lr_decay_iters = 15685

scaling_schedule_file = 'configs/gutenberg_cpu_growth_248.yaml'
