"""Learner updates on one data-parallel rank (or the whole batch when WORLD_SIZE is 1): run by
tests/test_distributed.py as separate processes. Writes the updated parameters and the last update's metrics.

Settings are `LearnerConfig` fields plus: `parallel` (ddp | fsdp2), `groups` (GRPO groups of 3 episodes; rank r
takes groups r, r + world, ...), `updates` (on the same batch) and `momentum` (SGD's, so a second update
depends on optimizer state)."""

import json
import sys

import torch

from agentenv.learn import distributed as D
from agentenv.learn.learner import LearnerConfig, episode_advantages, make_batch, update
from agentenv.policies.tiny import tiny_model
from agentenv.types import Episode, Sample


def episodes(n_groups: int = 4, group_size: int = 3) -> list[Episode]:
    g = torch.Generator().manual_seed(0)
    out = []
    for group in range(n_groups):
        prompt = torch.randint(10, 500, (6 + group,), generator=g).tolist()
        for k in range(group_size):
            sample = Sample()
            sample.extend(prompt, generated=False)
            n = 3 + int(torch.randint(0, 9, (1,), generator=g))
            sample.extend(torch.randint(10, 500, (n,), generator=g).tolist(), generated=True,
                          logprobs=(-torch.rand(n, generator=g) * 3).tolist())
            out.append(Episode(group, group, samples=[sample], reward=float(torch.rand(1, generator=g) > 0.5)))
    return out


def main(out: str, settings: str) -> None:
    torch.set_num_threads(1)
    rank, world = D.init_from_env("cpu")
    options = json.loads(settings)
    parallel, groups = options.pop("parallel", "ddp"), options.pop("groups", 4)
    updates, momentum = options.pop("updates", 1), options.pop("momentum", 0.0)
    cfg = LearnerConfig(**options)
    mine = [e for e in episodes(groups) if e.group_id % world == rank]  # whole GRPO groups per rank
    model = tiny_model("tiny", seed=5)
    if parallel == "fsdp2":
        D.shard(model)
    # Adam's first step is ±lr where a gradient is ~0: it would amplify rounding; momentum keeps SGD linear
    optimizer = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=momentum)
    batch = make_batch(mine, episode_advantages(mine, cfg), 0)
    for _ in range(updates):
        stats = update(model, optimizer, batch, cfg, generator=torch.Generator().manual_seed(1))
    params = D.whole(model.state_dict())  # a collective when sharded: every rank takes part
    if rank == 0:
        torch.save({"params": {k: v.detach() for k, v in params.items()}, "stats": stats}, out)
    D.shutdown()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
