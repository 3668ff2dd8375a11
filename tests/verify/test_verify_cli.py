"""`fedinvert verify-model FILE ...`: exit 0 clean, 1 suspicious, 2 bad input (one line, no traceback)."""

import pytest
import torch
from safetensors.torch import save_file

from fedinvert.cli import main
from fedinvert.models import build_model

pytestmark = pytest.mark.usefixtures("one_thread")

CONVNET = ["model=convnet", "model.width=0.25", "image_size=28", "channels=1", "num_classes=10"]


def save(model, path):
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return str(path)


@pytest.fixture
def benign(tmp_path):
    model = build_model("convnet", in_channels=1, num_classes=10, image_size=28, width=0.25, seed=4)
    return save(model, tmp_path / "benign.safetensors")


def test_a_benign_model_exits_0_with_one_line_per_finding(benign, capsys):
    assert main(["verify-model", benign, *CONVNET]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[-1] == "clean: all 6 findings passed"
    assert [line.split()[1].rstrip(":") for line in lines[:-1]] == [
        "architecture", "non_finite", "input_linear", "imprint_rows", "classifier_rows", "classifier_bias"]
    assert all(line.startswith("ok   ") for line in lines[:-1])


def test_a_reference_file_gives_the_architecture(benign, capsys):
    assert main(["verify-model", benign, f"reference={benign}"]) == 0
    assert "input_linear: no linear layer before the first convolution" in capsys.readouterr().out


def test_a_fishing_head_exits_1_naming_the_checks(tmp_path, capsys):
    model = build_model("convnet", in_channels=1, num_classes=10, image_size=28, width=0.25, seed=4)
    with torch.no_grad():
        model.fc.weight[1:] = 0
        model.fc.bias[1:] = 20.0
    assert main(["verify-model", save(model, tmp_path / "fish.safetensors"), *CONVNET]) == 1
    out = capsys.readouterr().out
    assert "FAIL classifier_rows [fc.weight]: smallest/largest row norm 0; 9 of 10 rows below 0.1" in out
    assert "FAIL classifier_bias [fc.bias]" in out
    assert out.strip().splitlines()[-1] == "SUSPICIOUS: 2 of 5 findings failed (classifier_rows, classifier_bias)"  # no imprint_rows: one nonzero row


def test_the_sent_model_of_an_imprint_run_is_detected(tmp_path, capsys):
    # Prepare: a malicious-server run records what it sent (as in tests/test_threat_server.py)
    out = tmp_path / "run"
    small = ["model=convnet", "model.width=0.25", "dataset=synthetic", "image_size=16", "batch_size=2", "device=cpu",
             "progress=false", "seed=0"]
    assert main(["attack", "attack=imprint", "attack.bins=50", *small, "threat.server=malicious", f"out={out}"]) == 0
    capsys.readouterr()
    # Execute: the client checks it against the convnet it agreed to train
    code = main(["verify-model", str(out / "sent_model.safetensors"), "model=convnet", "model.width=0.25",
                 "image_size=16", "channels=3", "num_classes=10"])
    # Assert
    printed = capsys.readouterr().out
    assert code == 1
    assert "FAIL architecture: the agreed model sits inside a wrapper (its keys under 'victim.')" in printed
    assert "FAIL input_linear: 1 linear layers read the input before the first convolution (imprint.encoder.weight)" in printed
    assert "FAIL imprint_rows [imprint.encoder.weight]: s2/s1 = " in printed


def test_the_sent_model_of_a_trap_weights_run_is_detected(tmp_path, capsys):
    # at B = 2 the attack's default rate is 0.5: rows hardly skewed, thresholds folded into the biases
    out = tmp_path / "run"
    args = ["attack=trap_weights", "model=mlp", "dataset=synthetic", "image_size=16", "batch_size=2", "device=cpu",
            "progress=false", "seed=0", "threat.server=malicious", f"out={out}"]
    assert main(["attack", *args]) == 0
    capsys.readouterr()
    code = main(["verify-model", str(out / "sent_model.safetensors"), "model=mlp", "image_size=16", "channels=3",
                 "num_classes=10"])
    printed = capsys.readouterr().out
    assert code == 1
    assert "FAIL bias_scale [layers.fc1.bias]: RMS bias 0.497 ×" in printed  # measured; benign ≤ 0.104
    assert printed.strip().splitlines()[-1] == "SUSPICIOUS: 1 of 9 findings failed (bias_scale)"


def _corrupt(tmp_path):
    path = tmp_path / "corrupt.safetensors"
    path.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not a header")
    return str(path)


def _pickle(tmp_path):
    path = tmp_path / "model.pt"
    torch.save({"fc.weight": torch.zeros(2, 2)}, path)
    return str(path)


def _truncated(tmp_path):
    model = build_model("mlp", in_channels=1, num_classes=10, image_size=28)
    path = tmp_path / "truncated.safetensors"
    save(model, path)
    path.write_bytes(path.read_bytes()[:-100])
    return str(path)


@pytest.mark.parametrize(("make", "args", "needle"), [
    (lambda tmp: str(tmp / "missing.safetensors"), CONVNET, "missing.safetensors: no such file"),
    (_corrupt, CONVNET, "is not a safetensors state dict"),
    (_pickle, CONVNET, "model.pt is not a safetensors state dict"),
    (_truncated, CONVNET, "is not a safetensors state dict"),
    (lambda tmp: str(tmp), CONVNET, "is a folder, not a safetensors file"),
    (None, ["model=nope", "image_size=28", "channels=1", "num_classes=10"], "unknown model 'nope'"),
    (None, ["model=convnet", "image_size=abc", "channels=1", "num_classes=10"], "image_size: must be a whole number"),
    (None, ["model=convnet", "image_size=28", "channels=0", "num_classes=10"], "channels: must be at least 1"),
    (None, ["model=convnet", "image_size=4", "channels=1", "num_classes=10"], "image_size must be at least 8 px"),
    (None, ["model=convnet", "channels=1", "num_classes=10"], "image_size: missing"),
    (None, [*CONVNET, "model.depth=3"], "model 'convnet' has no option 'depth'"),
    (None, [*CONVNET, "seed=3"], "seed: unknown key for verify-model"),
    (None, [], "verify-model needs the agreed architecture"),
    (None, ["num_classes"], "is not key=value"),
    (None, ["model=mlp", "reference=x.safetensors"], "either reference=FILE or model=NAME"),
])
def test_bad_input_exits_2_with_one_line(tmp_path, benign, capsys, one_error_line, make, args, needle):
    target = benign if make is None else make(tmp_path)
    assert main(["verify-model", target, *args]) == 2
    assert needle in one_error_line(capsys)
