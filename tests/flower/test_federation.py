"""A real Flower federation in process (3 clients, Fashion-MNIST partitions, FedAvg): the capturing server
reconstructs a client's round-1 images, and the verify mod makes a malicious server's imprint come back empty."""

import json
import math
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("flwr")

from flwr.app import ArrayRecord, ConfigRecord  # noqa: E402
from flwr.serverapp.strategy import FedAvg  # noqa: E402

from fedinvert.errors import ConfigError  # noqa: E402
from fedinvert.flower import CapturingStrategy, read_capture, run_local, verify_mod  # noqa: E402
from fedinvert.runner import load_observation  # noqa: E402

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "flower_fashion.py"

pytestmark = pytest.mark.usefixtures("one_thread")

@pytest.fixture(scope="module")
def honest(example, tmp_path_factory):
    out = tmp_path_factory.mktemp("flower") / "honest"
    parts = example.partitions(3, 4)
    example.federate(out, parts, rounds=2)
    return example, out, parts


def test_capture_saves_every_client_of_every_round(honest):
    example, out, parts = honest
    entries = read_capture(out)
    assert [(e["round"], e["status"]) for e in entries].count((1, "captured")) == 3
    assert [(e["round"], e["status"]) for e in entries].count((2, "captured")) == 3
    first = entries[0]
    assert first["num_examples"] == 4
    assert first["local_training"] == {"epochs": 1, "batch_size": 4, "lr": 0.01, "momentum": 0.0, "shuffle_seed": None}
    # the saved update is the client's weight delta: the sent weights plus it give the client's weights back
    obs = load_observation(out / first["path"], _cfg(out / first["path"])).observation
    assert obs.kind == "weight_delta" and obs.batch_size == 4 and obs.local_training.lr == 0.01
    assert sorted(obs.update) == sorted(n for n, _ in obs.model.named_parameters())
    assert first["update_norm"] > 0
    # round 2 starts from FedAvg's average of round 1: the sent weights differ between rounds
    second = next(e for e in entries if e["round"] == 2 and e["node"] == first["node"])
    obs2 = load_observation(out / second["path"], _cfg(out / second["path"])).observation
    w1, w2 = (dict(o.model.named_parameters()) for o in (obs, obs2))
    assert any(not torch.equal(w1[n], w2[n]) for n in w1)


def _cfg(folder):
    from fedinvert.config import resolve_config

    return resolve_config([f"observation={folder}", "attack=inverting_gradients"])


def test_round_one_update_leaks_the_clients_images(honest):
    """Inverting Gradients on the captured round-1 update of one client, scored against that client's own
    partition: its PSNR clears the no-leak reference of the same four images by a margin."""
    example, out, parts = honest
    first = next(e for e in read_capture(out) if e["round"] == 1 and e["status"] == "captured")
    folder = out / first["path"]
    indices, part = parts[int(first["metrics"]["partition-id"])]
    example.attach_private(folder, part.images, part.labels, indices=indices)
    metrics = example.attack_capture(folder, iterations=500, extra=["metrics.reid_distractors=20",
                                                                    "metrics.reference_draws=16"])
    print(f"PSNR {metrics['psnr']:.2f} dB, reference {metrics['reference']['psnr']:.2f} dB,"
          f" leakage {metrics['leakage_db']:+.2f} dB")
    assert metrics["leakage_db"] > 4.0  # measured +8.09 dB at 500 iterations
    assert math.isclose(metrics["psnr"] - metrics["reference"]["psnr"], metrics["leakage_db"], abs_tol=1e-6)


def test_verify_mod_refuses_an_imprint_server_and_nothing_is_captured(example, tmp_path):
    from fedinvert.data import FashionMNIST

    parts = example.partitions(3, 4, seed=1)
    public = FashionMNIST().take(range(500), split="test").images
    model_fn = example.imprinted_model_fn(public)
    guard = verify_mod({"name": "lenet-dlg", "in_channels": 1, "num_classes": 10, "image_size": 28})
    example.federate(tmp_path / "malicious", parts, rounds=1, model_fn=model_fn, mods=[guard])
    entries = read_capture(tmp_path / "malicious")
    assert [e["status"] for e in entries] == ["error"] * 3
    assert all("refused to train on a suspicious model" in e["reason"] and "imprint_rows" in e["reason"]
               for e in entries)


def test_without_the_mod_the_same_imprint_server_reads_images_exactly(example):
    """The control of the test above: the clients that train on the imprinted model give their images away."""
    from fedinvert.attacks.analytic.imprint import Imprint
    from fedinvert.data import FashionMNIST
    from fedinvert.metrics import match, psnr_per_image
    from fedinvert.observation import Observation

    parts = example.partitions(3, 4, seed=1)
    public = FashionMNIST().take(range(500), split="test").images
    model_fn = example.imprinted_model_fn(public)
    seen = {}

    class Recording(FedAvg):
        def aggregate_train(self, server_round, replies):
            replies = list(replies)
            for r in replies:
                seen[r.metadata.src_node_id] = r.content["arrays"].to_torch_state_dict()
            return super().aggregate_train(server_round, replies)

    sent = model_fn()
    app = example.client_app(parts, lambda: _copy(sent))
    run_local(Recording(fraction_evaluate=0.0, min_train_nodes=3, min_available_nodes=3), app, num_nodes=3,
              initial_arrays=ArrayRecord(sent.state_dict()), num_rounds=1, train_config=ConfigRecord(example.LOCAL))
    assert len(seen) == 3
    node = 1001
    after = seen[node]
    update = {n: after[n] - p.detach() for n, p in sent.named_parameters()}
    obs = Observation(model=sent, update=update, kind="weight_delta", image_shape=(1, 28, 28), num_classes=10,
                      normalization=example.NORMALIZATION, batch_size=4)
    rec = Imprint(bins=64, scale=100.0).reconstruct(obs)
    private = parts[0][1].images
    order = match(private, rec.images)
    psnr = psnr_per_image(private, rec.images[order])
    print("imprint PSNR per image", [round(float(v), 2) for v in psnr])
    exact = (psnr > 60).sum().item()
    assert exact >= 2  # one local SGD step is a scaled gradient: images alone in a bin come out exactly


def _copy(model):
    import copy

    return copy.deepcopy(model)


def test_capturing_strategy_refuses_bad_arguments(tmp_path):
    base = FedAvg()
    with pytest.raises(ConfigError, match="not empty"):
        (tmp_path / "x").mkdir()
        (tmp_path / "x" / "f").write_text("keep me")
        CapturingStrategy(base, out=tmp_path / "x", victim={"name": "lenet5"}, image_shape=(1, 28, 28), num_classes=10)
    assert (tmp_path / "x" / "f").read_text() == "keep me"
    with pytest.raises(ConfigError, match="unknown model|model"):
        CapturingStrategy(base, out=tmp_path / "y", victim={"name": "nope"}, image_shape=(1, 28, 28), num_classes=10)
    with pytest.raises(ConfigError, match="image_shape"):
        CapturingStrategy(base, out=tmp_path / "z", victim={"name": "lenet5"}, image_shape=(28, 28), num_classes=10)
    with pytest.raises(ConfigError, match="Strategy"):
        CapturingStrategy(object(), out=tmp_path / "w", victim={"name": "lenet5"}, image_shape=(1, 28, 28),
                          num_classes=10)
    file = tmp_path / "file"
    file.write_text("x")
    with pytest.raises(ConfigError, match="not a folder"):
        CapturingStrategy(base, out=file, victim={"name": "lenet5"}, image_shape=(1, 28, 28), num_classes=10)


def test_read_capture_refuses_a_folder_that_is_not_one(tmp_path):
    with pytest.raises(ConfigError, match="not a capture folder"):
        read_capture(tmp_path)
    (tmp_path / "capture.json").write_text("{not json")
    with pytest.raises(ConfigError, match="not a fedinvert capture index"):
        read_capture(tmp_path)
    (tmp_path / "capture.json").write_text(json.dumps({"captures": [{"round": 1}]}))
    assert read_capture(tmp_path) == [{"round": 1}]


@pytest.mark.slow
def test_the_example_runs_on_flowers_ray_simulation_engine(example, tmp_path):
    """``python examples/flower_fashion.py --ray`` (extra [flower-sim]): the honest federation on Flower's
    simulation engine, whose Ray workers import the ClientApp afresh; the capture and the attack on it work the
    same, and the malicious server is refused."""
    import os
    import re
    import subprocess

    pytest.importorskip("ray")
    env = {**os.environ, "FLWR_TELEMETRY_ENABLED": "0", "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, str(EXAMPLE), "--out", str(tmp_path / "ray"), "--ray", "--iterations", "500"],
                          capture_output=True, text=True, env=env, timeout=900)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "captured 6 updates over 2 rounds" in done.stdout
    leak = float(re.search(r"leakage ([+-][0-9.]+) dB", done.stdout).group(1))
    assert leak > 4.0
    assert "3 of 3 clients refused, 0 updates captured" in done.stdout


def test_a_captured_update_is_attacked_from_the_command_line(honest, tmp_path):
    from fedinvert.cli import main

    example, out, parts = honest
    entry = next(e for e in read_capture(out) if e["round"] == 2 and e["status"] == "captured")
    folder = out / entry["path"]
    run = tmp_path / "run"
    assert main(["attack", f"observation={folder}", "attack=inverting_gradients", "attack.iterations=5",
                 "attack.compile=false", "device=cpu", "progress=false", f"out={run}"]) == 0
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["psnr"] is None and metrics["iterations"] == 5  # no private batch attached: nothing to score
    assert (run / "reconstruction.png").is_file() or (run / "tensors.safetensors").is_file()
