# the growth recipe for the data-rich CPU testbed (config/train_gutenberg_cpu.py: Project Gutenberg
# bytes, context 128, batch 8, width 64, 4 heads, mlp 256): it starts at 1 layer and grows to 2, then
# 4 layers by masked growth (configs/gutenberg_cpu_growth.yaml), early, so that the final model
# trains most of the run; warmup-stable-decay lr at the 4-layer model's tuned peak, the cooldown after
# the last growth. Measured (seed 1): 1.6820 at 0.80 x F_ref, above the 2-layer model alone at 0.5 x
# F_ref (1.6609): the starting line of the search, not a recipe that beats the static envelope.
# Every recipe measured is in docs/growth_recipes.md.
#
# $ python data/gutenberg/prepare.py --input ../shared/data/gutenberg
# $ python train.py config/train_gutenberg_cpu_growth.py
# $ python bench_growth.py --config=config/train_gutenberg_cpu_growth.py --sizes=config/gutenberg_cpu_sizes.yaml \
#       --ladder=0.25,0.5,1.0 --ref_iters=12000 --jobs=2 --report=docs/growth_vs_envelope

exec(open('config/train_gutenberg_cpu.py').read())

out_dir = 'out-gutenberg-cpu-growth'
wandb_run_name = 'cpu-growth'

n_layer = 1  # the schedule grows it to 2, then 4

max_iters = 12424  # 0.8 x F_ref: 2000 iters of 1 layer, 3000 of 2, 7424 of 4
lr_decay_iters = 12424

scaling_schedule_file = 'configs/gutenberg_cpu_growth.yaml'
