"""Run under torchrun: trains with realqa.train on every rank, then writes a digest of its weights.

Usage: torchrun --nproc_per_node 2 tests/dist_train.py OUT_DIR key=value ...
"""

import hashlib
import os
import sys

import torch

from realqa.train import load_config, train

out_dir, overrides = sys.argv[1], sys.argv[2:]
result = train(load_config(None, [f"output_dir={out_dir}", *overrides]), log=lambda message: None)
digest = hashlib.sha256()
for name, parameter in sorted(result.model.named_parameters()):
    digest.update(name.encode())
    digest.update(parameter.detach().float().cpu().numpy().tobytes())
rank = int(os.environ.get("RANK", 0))
with open(os.path.join(out_dir, f"digest_rank{rank}.txt"), "w") as f:
    world = torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1
    f.write(f"{digest.hexdigest()} {result.steps} {world}\n")
