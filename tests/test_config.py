import pytest

from slimtrack.config import PRESETS, build_config
from slimtrack.errors import UserError


def test_presets_build_and_validate():
    for name in PRESETS:
        cfg = build_config(name)
        assert cfg.preset == name
        assert cfg.data.seq_len <= cfg.model.block_size


def test_overrides_by_field_and_qualified_name():
    cfg = build_config("test", max_chunks=7, **{"tracking.enabled": False, "lr": None})
    assert cfg.train.max_chunks == 7
    assert cfg.tracking.enabled is False
    assert cfg.train.lr == build_config("test").train.lr  # None means "not given"


@pytest.mark.parametrize("overrides, fragment", [
    (dict(max_chunks=0), "max-chunks"),
    (dict(viz_interval=-1), "viz-interval"),
    (dict(checkpoint_interval=0), "checkpoint-interval"),
    (dict(seq_len=10_000), "exceeds the model's context"),
    (dict(kernels="cuda-magic"), "--kernels"),
    (dict(device="tpu"), "--device"),
    (dict(lr=-1.0), "--lr"),
    (dict(no_such_field=1), "unknown config field"),
])
def test_invalid_values_are_user_errors(overrides, fragment):
    with pytest.raises(UserError, match=fragment):
        build_config("test", **overrides)


def test_unknown_preset():
    with pytest.raises(UserError, match="unknown preset"):
        build_config("huge")


def test_params_are_flat_strings_with_stable_names():
    params = build_config("small").as_params()
    assert params["config.preset"] == "small"
    assert params["train.viz_interval"] == "50"
    assert params["train.checkpoint_interval"] == "2000"
    assert all(isinstance(v, str) for v in params.values())
    # never the bare -P names that `mlflow run` logs itself
    assert not {"max_chunks", "test", "preset", "viz_interval"} & set(params)


def test_no_log_model_flag_reaches_the_config():
    from slimtrack.cli import build_parser, config_from_args

    def parse(*argv):
        return config_from_args(build_parser().parse_args(["train", "--test", *argv]))

    assert parse().tracking.log_model is True
    assert parse("--no-log-model").tracking.log_model is False
    assert parse("--no-log-model").as_params()["tracking.log_model"] == "False"


def test_every_field_is_declared_with_its_doc():
    from slimtrack.config import config_fields

    fields = list(config_fields())
    assert fields and all(info.help for info in fields)
    assert len({info.flag for info in fields}) == len(fields)  # one flag name per field
