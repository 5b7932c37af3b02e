# the growth recipe for the data-rich CPU testbed (config/train_gutenberg_cpu.py: Project Gutenberg
# bytes, context 128, batch 8, width 64, 4 heads, mlp 256): 2 layers for 9000 iters, then G_stack to 4
# layers (configs/gutenberg_cpu_growth.yaml) for the last 3635, on 0.7 x F_ref, warmup-stable-decay lr at
# the tuned peak of both sizes (0.004), the cooldown after the growth. Seed 1: 1.6230, the envelope's
# loss at 1.0 x F_ref (4 layers alone, 1.6227). Every recipe measured is in docs/growth_recipes.md.
#
# $ python data/gutenberg/prepare.py --input ../shared/data/gutenberg
# $ python train.py config/train_gutenberg_cpu_growth.py
# $ python bench_growth.py --config=config/train_gutenberg_cpu_growth.py --sizes=config/gutenberg_cpu_sizes.yaml \
#       --ladder=0.25,0.5,1.0,2.0 --ref_iters=12000 --lr_factors=0.5,1,2 --final_eval_iters=500 \
#       --extra_text=../shared/data/tinyshakespeare/input.txt --jobs=2 --reuse --report=docs/growth_vs_envelope --seeds=11
# (the instrument of issue 23: one seed per session, docs/growth_recipes.md has the plan and its cost)

exec(open('config/train_gutenberg_cpu.py').read())

out_dir = 'out-gutenberg-cpu-growth'
wandb_run_name = 'cpu-growth'

n_layer = 2  # the schedule grows it to 4

max_iters = 12635  # 0.7 x F_ref: 9000 iters of 2 layers, 3635 of 4
lr_decay_iters = 12635

scaling_schedule_file = 'configs/gutenberg_cpu_growth.yaml'
