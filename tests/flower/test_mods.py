"""The client mods on their own: verify_mod's pass/refuse/log paths, leakage_mod refusing and defending."""

import logging

import pytest
import torch

pytest.importorskip("flwr")

from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict  # noqa: E402

from fedinvert.errors import ConfigError  # noqa: E402
from fedinvert.flower import leakage_mod, verify_mod  # noqa: E402
from fedinvert.flower.local import run_local  # noqa: E402
from fedinvert.flower.mods import REFUSED_SUSPICIOUS_MODEL  # noqa: E402
from fedinvert.models import build_model  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")

SPEC = {"name": "lenet-dlg", "in_channels": 1, "num_classes": 10, "image_size": 28}


def _message(state, message_type="train"):
    from flwr.supercore.task_identity import TaskIdentity

    for attribute in ("run_id", "node_id", "task_id"):
        try:
            getattr(TaskIdentity, attribute)
        except RuntimeError:
            setattr(TaskIdentity, attribute, 1)
    content = RecordDict({"arrays": ArrayRecord(state), "config": ConfigRecord({"lr": 0.01, "local-epochs": 1,
                                                                                "batch-size": 4})})
    return Message(content, 1001, message_type, group_id="1")


def _context():
    return Context(run_id=1, node_id=1001, node_config={"partition-id": 0, "num-partitions": 1}, state=RecordDict(),
                   run_config={})


def _echo(message, context):
    return Message(RecordDict({"arrays": message.content["arrays"], "metrics": MetricRecord({"num-examples": 4})}),
                   reply_to=message)


def test_verify_mod_passes_the_agreed_model_and_counts_it():
    model = build_model("lenet-dlg", in_channels=1, num_classes=10, image_size=28)
    context = _context()
    reply = verify_mod(SPEC)(_message(model.state_dict()), context, _echo)
    assert not reply.has_error()
    assert int(context.state.config_records["fedinvert.verify"]["checked"]) == 1


def test_verify_mod_refuses_or_logs_a_model_of_another_architecture(caplog):
    other = build_model("lenet5", in_channels=1, num_classes=10, image_size=28)
    context = _context()
    reply = verify_mod(SPEC)(_message(other.state_dict()), context, _echo)
    assert reply.has_error() and reply.error.code == REFUSED_SUSPICIOUS_MODEL
    assert "architecture" in reply.error.reason
    assert int(context.state.config_records["fedinvert.verify"]["refused"]) == 1
    with caplog.at_level(logging.WARNING):
        reply = verify_mod(SPEC, refuse=False)(_message(other.state_dict()), _context(), _echo)
    assert not reply.has_error() and "suspicious" in caplog.text


def test_verify_mod_leaves_evaluation_messages_alone():
    other = build_model("lenet5", in_channels=1, num_classes=10, image_size=28)
    reply = verify_mod(SPEC)(_message(other.state_dict(), "evaluate"), _context(), _echo)
    assert not reply.has_error()


def test_mods_refuse_bad_settings():
    with pytest.raises(ConfigError, match="refuse"):
        verify_mod(SPEC, refuse="yes")
    common = {"data_fn": lambda m, c: None, "victim": {"name": "lenet-dlg"}, "image_shape": (1, 28, 28),
              "num_classes": 10, "data": {"dataset": "fashion-mnist", "split": "train"}}
    with pytest.raises(ConfigError, match="action"):
        leakage_mod(**common, action="drop")
    with pytest.raises(ConfigError, match="threshold"):
        leakage_mod(**common, threshold_db=float("nan"))
    with pytest.raises(ConfigError, match="data"):
        leakage_mod(**{**common, "data": {"split": "train"}})
    with pytest.raises(ConfigError):
        leakage_mod(**common, attack="no-such-attack")
    with pytest.raises(ConfigError):
        leakage_mod(**common, attack_options={"iterations": -3})


def _federation(example, tmp_path, mod):
    parts = example.partitions(2, 4, seed=2)
    example.federate(tmp_path / "capture", parts, rounds=1, mods=[mod])
    from fedinvert.flower import read_capture

    return parts, read_capture(tmp_path / "capture")


def _guard(example, parts, **kwargs):
    return leakage_mod(
        data_fn=lambda message, context: (parts[int(context.node_config["partition-id"])][1].images,
                                          parts[int(context.node_config["partition-id"])][1].labels),
        victim=example.VICTIM, image_shape=example.IMAGE_SHAPE, num_classes=10, normalization=example.NORMALIZATION,
        data={"dataset": "fashion-mnist", "split": "train"}, attack_options={"iterations": 200}, **kwargs)


def test_leakage_mod_refuses_an_update_that_leaks(example, tmp_path, caplog):
    parts = example.partitions(2, 4, seed=2)
    with caplog.at_level(logging.INFO, logger="fedinvert.flower.mods"):
        _, entries = _federation(example, tmp_path, _guard(example, parts, threshold_db=1.0))
    assert [e["status"] for e in entries] == ["error", "error"]
    assert all("leaks" in e["reason"] and "over the no-leak reference" in e["reason"] for e in entries)
    leaks = [float(line.split("leakage ")[1].split(" dB")[0]) for line in caplog.text.splitlines() if "self-attack" in line]
    print("self-attack leakage", leaks)
    assert len(leaks) == 2 and min(leaks) > 1.0


def test_leakage_mod_defends_instead_and_the_server_gets_the_noised_update(example, tmp_path, caplog):
    parts = example.partitions(2, 4, seed=2)
    with caplog.at_level(logging.WARNING, logger="fedinvert.flower.mods"):
        _, entries = _federation(example, tmp_path, _guard(example, parts, threshold_db=1.0, action="defend",
                                                            defense={"gaussian_noise": {"std": 0.05}}))
    assert [e["status"] for e in entries] == ["captured", "captured"]
    # the delta the server saw carries the noise: its norm is that of ~N(0, 0.05²) over every weight
    count = sum(p.numel() for p in build_model("lenet-dlg", in_channels=1, num_classes=10, image_size=28).parameters())
    for e in entries:
        assert e["update_norm"] == pytest.approx(0.05 * count**0.5, rel=0.1)
    after = [line.split("leakage ")[-1] for line in caplog.text.splitlines() if "instead" in line]
    print("defended:", after)
    assert len(after) == 2


def test_run_local_refuses_bad_arguments():
    from flwr.clientapp import ClientApp
    from flwr.serverapp.strategy import FedAvg

    arrays = ArrayRecord(torch.nn.Linear(2, 2).state_dict())
    with pytest.raises(ConfigError, match="num_nodes"):
        run_local(FedAvg(), ClientApp(), num_nodes=0, initial_arrays=arrays, num_rounds=1)
    with pytest.raises(ConfigError, match="num_rounds"):
        run_local(FedAvg(), ClientApp(), num_nodes=2, initial_arrays=arrays, num_rounds=0)
    with pytest.raises(ConfigError, match="ClientApp"):
        run_local(FedAvg(), object(), num_nodes=2, initial_arrays=arrays, num_rounds=1)
