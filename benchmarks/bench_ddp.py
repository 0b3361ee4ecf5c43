"""Data-parallel update step time on CPU (gloo): world size 1 vs 2 on the same global batch, DDP-style and FSDP2
(`TrainConfig.parallel`), side by side.

    python benchmarks/bench_ddp.py [--rows 64] [--repeats 5]

Each rank runs with one torch thread on its half of the batch (whole GRPO groups) and the learner sums the
gradients (`agentenv/learn/distributed.py`); the figure is the median wall time of one `update` on rank 0.
FSDP2 adds an all-gather of every layer in forward and again in backward, and reduce-scatters instead of one
all-reduce. On a 2-core machine world size 2 uses both cores; the load average is printed (other jobs share them).
"""

from __future__ import annotations

import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

WORKER = r'''
import json, sys, time, torch
sys.path.insert(0, sys.argv[3])
from agentenv.learn import distributed as D
from agentenv.learn.learner import LearnerConfig, episode_advantages, make_batch, update
from agentenv.policies.tiny import tiny_model
from agentenv.types import Episode, Sample
torch.set_num_threads(1)
rank, world = D.init_from_env("cpu")
rows, repeats, parallel = int(sys.argv[1]), int(sys.argv[2]), sys.argv[4]
g = torch.Generator().manual_seed(0)
episodes = []
for i in range(rows):
    s = Sample(); s.extend(torch.randint(10, 500, (300,), generator=g).tolist(), generated=False)
    s.extend(torch.randint(10, 500, (64,), generator=g).tolist(), generated=True, logprobs=[-1.0] * 64)
    episodes.append(Episode(i // 8, i // 8, samples=[s], reward=float(i % 3 == 0)))
mine = [e for e in episodes if e.group_id % world == rank]
cfg = LearnerConfig(micro_batch_size=8)
model = tiny_model("small", seed=0)
if parallel == "fsdp2":
    D.shard(model)
opt = torch.optim.AdamW(model.parameters(), lr=1e-5)
batch = make_batch(mine, episode_advantages(mine, cfg), 0)
times = []
for _ in range(repeats + 1):
    start = time.perf_counter(); update(model, opt, batch, cfg); times.append(time.perf_counter() - start)
if rank == 0:
    print(json.dumps(times[1:]))
D.shutdown()
'''


def run(world: int, rows: int, repeats: int, parallel: str = "ddp") -> list[float]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with tempfile.NamedTemporaryFile("w", suffix=".py", delete=False) as fh:
        fh.write(WORKER)
    env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "WORLD_SIZE": str(world), "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, fh.name, str(rows), str(repeats), str(ROOT), parallel], stdout=subprocess.PIPE, text=True,
                              env={**env, "RANK": str(r), "LOCAL_RANK": str(r)}) for r in range(world)]
    out = [p.communicate()[0] for p in procs]
    os.unlink(fh.name)
    return json.loads(out[0].strip().splitlines()[-1])


def main() -> None:
    rows = int(sys.argv[sys.argv.index("--rows") + 1]) if "--rows" in sys.argv else 64
    repeats = int(sys.argv[sys.argv.index("--repeats") + 1]) if "--repeats" in sys.argv else 5
    print(f"load average {os.getloadavg()}; 'small' model, {rows} rows x 364 tokens, micro-batch 8, 1 thread per rank")
    one, two = statistics.median(run(1, rows, repeats)), statistics.median(run(2, rows, repeats))
    sharded = statistics.median(run(2, rows, repeats, "fsdp2"))
    print(f"world 1: {one:.2f} s/update   world 2: {two:.2f} s/update   speed-up {one / two:.2f}x")
    print(f"world 2, FSDP2: {sharded:.2f} s/update   speed-up {one / sharded:.2f}x   (FSDP2 / DDP: {sharded / two:.2f})")
    print(f"load average at end {os.getloadavg()}")


if __name__ == "__main__":
    main()
