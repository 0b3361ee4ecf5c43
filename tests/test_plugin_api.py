"""Plug-ins are real plug-ins: the learner names none of them, and one defined in this file (a config
dataclass and a `Plugin` subclass, registered with one call) is configured and run like the built-ins."""

import re
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from agentenv.errors import UserError
from agentenv.learn import learner as L
from agentenv.learn.learner import LearnerConfig, episode_advantages, make_batch, update
from agentenv.learn.plugin import Plugin, build_plugins, register, registry
from agentenv.learn.train import load_config
from agentenv.policies.tiny import tiny_model
from agentenv.types import Episode, Sample

LEARN = Path(L.__file__).parent


@pytest.mark.parametrize("module", ["learner.py", "train.py"])
def test_the_learner_names_no_plugin(module):
    text = (LEARN / module).read_text(encoding="utf-8")
    names = set(registry()) | {"hrr", "ZipRL", "CARE", "OWPO", "NSR", "FIPO", "OCC", "MTP", "IH-GRPO", "AMR-SD", "reflection", "probe"}
    found = sorted(n for n in names if re.search(rf"(?<![A-Za-z]){re.escape(n)}(?![A-Za-z])", text, re.IGNORECASE))
    assert not found, f"{module} names plug-ins {found}"


@dataclass
class FlipConfig:
    factor: float = -1.0  # multiplies every token advantage


class Flip(Plugin):
    """A test plug-in: scales token advantages; counts its hook calls."""

    name = "flip_for_test"
    Config = FlipConfig

    def __init__(self, config=None):
        super().__init__(config)
        self.calls = {"advantages": 0, "token_advantages": 0}

    def advantages(self, adv, episodes, ctx):
        self.calls["advantages"] += 1
        return adv

    def token_advantages(self, adv, logp, micro, ctx):
        self.calls["token_advantages"] += 1
        return adv * self.config.factor


@pytest.fixture(scope="module", autouse=True)
def flip_registered():
    register(Flip)
    yield
    registry().pop(Flip.name)


def _episodes():
    out = []
    for i, reward in enumerate([1.0, 0.0, 0.5, 0.0]):
        sample = Sample()
        sample.extend([1, 2, 3, 4], generated=False)
        sample.extend([5 + i, 6, 7 + i], generated=True, logprobs=[-1.0, -1.5, -2.0])
        out.append(Episode(group_id=i // 2, seed=i, samples=[sample], reward=reward))
    return out


def _step(cfg):
    model = tiny_model("tiny", seed=3)
    plugins = build_plugins(cfg)
    episodes = _episodes()
    adv = episode_advantages(episodes, cfg, plugins=plugins)
    update(model, torch.optim.SGD(model.parameters(), lr=0.1), make_batch(episodes, adv, 0, plugins=plugins), cfg,
           plugins=plugins)
    return torch.cat([p.detach().flatten() for p in model.parameters()]), plugins


def test_a_plugin_defined_in_a_test_file_is_configured_and_run_like_a_builtin():
    cfg = load_config(None, ["--learner.plugins.flip_for_test.factor=-1", "--learner.micro_batch_size=2"]).learner
    assert isinstance(cfg.plugins["flip_for_test"], FlipConfig) and cfg.plugins["flip_for_test"].factor == -1.0
    base = tiny_model("tiny", seed=3)
    before = torch.cat([p.detach().flatten() for p in base.parameters()])
    plain, _ = _step(LearnerConfig(micro_batch_size=2))
    flipped, (flip,) = _step(cfg)
    assert flip.calls == {"advantages": 1, "token_advantages": 2}  # once per step, once per micro-batch
    # on-policy SGD: the advantage enters the gradient linearly, so factor −1 gives exactly the opposite step
    torch.testing.assert_close(flipped - before, -(plain - before), rtol=1e-4, atol=1e-7)
    with pytest.raises(UserError, match="did you mean 'factor'"):
        load_config(None, ["--learner.plugins.flip_for_test.factr=2"])


def test_plugins_run_in_pipeline_order_whatever_order_a_config_names_them():
    a = LearnerConfig(plugins=["owpo", "hrr", "flip_for_test"]).plugins
    b = LearnerConfig(plugins={"flip_for_test": None, "owpo": {}, "hrr": {"beta": 0.5}}).plugins
    assert list(a) == list(b) == ["hrr", "owpo", "flip_for_test"]  # the built-ins' registered order, then later ones
    with pytest.raises(UserError, match="did you mean 'owpo'"):
        LearnerConfig(plugins=["owpoo"])
