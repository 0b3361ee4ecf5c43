"""Training configs: dataclass defaults, YAML, then --key=value overrides (dotted for nested ones)."""

import pytest

from agentenv.policies.train import TrainConfig, load_config


def test_yaml_then_cli_overrides(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("steps: 7\nlearner:\n  lr: 1.0e-5\n  loss: cispo\nenv_kwargs:\n  execution: delayed\n")
    cfg = load_config(str(path), ["--learner.lr=7e-4", "--group_size=4", "--env_kwargs.kinds=[counting]"])
    assert cfg.steps == 7 and cfg.group_size == 4
    assert cfg.learner.lr == pytest.approx(7e-4) and cfg.learner.loss == "cispo"
    assert cfg.env_kwargs["execution"] == "delayed" and cfg.env_kwargs["kinds"] == ["counting"]
    assert TrainConfig().learner.lr != cfg.learner.lr  # defaults are not shared between instances


@pytest.mark.parametrize("override", ["--stepz=3", "--learner.nope=1", "steps"])
def test_bad_keys_are_user_errors(override):
    with pytest.raises(SystemExit):
        load_config(None, [override])
