# tiny models on a small CPU: one thread each is much faster than threads fighting over two cores,
# for the tests in this process and for the train.py / torchrun subprocesses they start
import os

import torch

os.environ['OMP_NUM_THREADS'] = '1'
torch.set_num_threads(1)
