"""Every network configuration survives the JSON round trip of a weights manifest unchanged."""
import json

import pytest

pytest.importorskip("torch")

from AIFSelectorLib.input_functions.aifnet.model import AIFNetConfig  # noqa: E402
from AIFSelectorLib.models.config_json import config_from_dict  # noqa: E402
from StrokeLesionLib.lesion_models.pseudodwi.model import PseudoDWIConfig  # noqa: E402
from StrokeLesionLib.lesion_models.sean.alignment import AlignmentConfig  # noqa: E402
from StrokeLesionLib.lesion_models.sean.model import SEANConfig  # noqa: E402
from StrokeLesionLib.lesion_models.xnet.model import XNetConfig  # noqa: E402

CONFIGS = (AIFNetConfig(), PseudoDWIConfig(slnet_widths=(8, 16, 24, 32)), AlignmentConfig(), SEANConfig(),
           XNetConfig(widths=(8, 16, 32), grid_size=64))


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: type(c).__name__)
def test_json_round_trip_gives_an_equal_config(config):
    again = type(config).from_dict(json.loads(json.dumps(config.to_dict())))
    assert again == config
    assert all(type(getattr(again, k)) is type(getattr(config, k)) for k in config.to_dict())


def test_unknown_keys_are_ignored_and_tuples_restored():
    d = {**SEANConfig().to_dict(), "written_by_a_later_version": 1, "partitions": [2, 2]}
    cfg = config_from_dict(SEANConfig, d)
    assert cfg.partitions == (2, 2) and not hasattr(cfg, "written_by_a_later_version")
