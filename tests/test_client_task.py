"""A client is sent only the keys it trains with: ``SLClientTask`` in ``sl_begin``, ``FLClientTask`` in FL's
train message. The Flower tests run the real runtime with these tasks: a server that sent more would fail
there, since a client refuses unknown keys (checked here)."""

from __future__ import annotations

import json
import tempfile

import pytest
from flwr.app import ConfigRecord

from fl_split.checkpoint import MAY_CHANGE
from fl_split.config import ConfigError
from fl_split.fl.client import client_task as fl_client_task
from fl_split.fl.config import FLClientTask, FLConfig, load_fl_config
from fl_split.sl.client import client_task as sl_client_task
from fl_split.sl.config import SLClientTask, SLConfig
from strategies.compressed_fedavg import CompressedFedAvg
from strategies.split_learning import SplitLearningStrategy

SERVER_ONLY_SL = {"out_dir", "server_device", "stream", "flower", "mode", "rounds", "clients", "transport", "engine"}


def _sl(**values: object) -> SLConfig:
    base = {"progress": False, "clients": 3, "out_dir": tempfile.mkdtemp(prefix="secret-dir-")}
    return SLConfig.from_dict({**base, **values})


def test_the_sl_task_is_a_subset_of_the_run_config_without_server_or_resumable_keys() -> None:
    task_keys = set(SLClientTask.schema())
    assert task_keys < set(SLConfig.schema())
    assert not task_keys & (SERVER_ONLY_SL | set(MAY_CHANGE))
    assert {"dataset", "seed", "cut", "uplink", "downlink", "batch_size", "optimizer", "partition"} <= task_keys
    assert set(FLClientTask.schema()) < set(FLConfig.schema())
    assert not set(FLClientTask.schema()) & {"uplink", "downlink", "out_dir", "flower", "rounds", *MAY_CHANGE}


def test_sl_begin_carries_the_task_and_nothing_of_the_server() -> None:
    cfg = _sl(uplink="topk:keep=0.05", batch_size=16, **{"optimizer.lr": 0.07, "stream.port": 9123})
    sent = SplitLearningStrategy(cfg).begin_fields(1)["config"]
    assert set(json.loads(sent)) == set(SLClientTask.schema())
    assert "secret-dir-" not in sent and "9123" not in sent  # no server path, no server port
    task = sl_client_task(sent)
    assert (task.uplink, task.batch_size, task.optimizer.lr, task.seed) == ("topk:keep=0.05", 16, 0.07, 0)
    assert task == SLClientTask.of(cfg)


def test_the_fl_train_record_carries_the_task_and_nothing_of_the_server() -> None:
    cfg = load_fl_config("fl", values={"progress": False, "out_dir": tempfile.mkdtemp(prefix="secret-dir-")})
    cfg = cfg.replace(batch_size=8, local_epochs=2)
    strategy = CompressedFedAvg(cfg)
    sent = str(strategy._config_json)
    assert set(json.loads(sent)) == set(FLClientTask.schema()) and "secret-dir-" not in sent
    task = fl_client_task(sent)
    assert (task.batch_size, task.local_epochs, task.optimizer.momentum) == (8, 2, 0.9)
    record = ConfigRecord({"fl-config": sent})  # as configure_train sends it (round trip through a record)
    assert fl_client_task(str(record["fl-config"])) == task


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("{not json", "is not JSON"),
        ("[1, 2]", "must be a JSON object"),
        ('{"out_dir": "runs/sl"}', "unknown config key 'out_dir'"),
        ('{"batch_size": 0}', "batch_size"),
        ('{"uplink": "nosuch:keep=1"}', "nosuch"),
    ],
)
def test_a_malformed_task_is_refused_with_what_is_wrong(text: str, expected: str) -> None:
    for parse, what in ((sl_client_task, "sl_begin"), (fl_client_task, "fl-config")):
        if parse is fl_client_task and "uplink" in text:
            continue  # FL's codecs travel in the record, not in the task
        with pytest.raises(ConfigError, match=expected) as info:
            parse(text)
        assert what in str(info.value)
