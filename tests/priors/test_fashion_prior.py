"""The ``fashion`` prior: staged architecture, training with exact resume, export, loading errors, quality metrics."""

from __future__ import annotations

import json
import os
import signal

import pytest
import torch

from fedinvert.cli import main
from fedinvert.errors import CheckpointError, ConfigError, DataNotFoundError
from fedinvert.priors import PRIORS, FashionPrior, build_prior, quality
from fedinvert.priors import fashion as fashion_module
from fedinvert.priors.training import (
    CHECKPOINT_FILE,
    GANTrainer,
    TrainSettings,
    export_generator,
    read_checkpoint,
    standing_stats,
    train_prior,
)

#: Class agreement measured on the committed snapshot with 100 samples per class (see fashion.json); the test
#: with 20 samples per class allows a margin for the smaller sample.
MEASURED_AGREEMENT = 0.93  # step-1800 snapshot (1.92 epochs), 100 samples per class, seed 0
AGREEMENT_MARGIN = 0.1

HAS_WEIGHTS = fashion_module.WEIGHTS_FILE.is_file() and quality.CLASSIFIER_FILE.is_file()


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def prior() -> FashionPrior:
    return FashionPrior(random_init=True)


def _tiny_data(n: int = 16, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, 28, 28, generator=g), torch.arange(n) % 10


SETTINGS = TrainSettings(seed=3, batch_size=4, d_width=4)


# -- architecture ---------------------------------------------------------------------------------------------
def test_registered_with_staged_shapes(prior):
    assert "fashion" in PRIORS.names()
    assert prior.stage_names == ["z", "f1", "f2", "f3", "f4"]
    assert prior.native_shape == (1, 32, 32) and prior.num_classes == 10
    z = prior.sample_latent(2, generator=torch.Generator().manual_seed(0))
    cond = prior.condition(torch.tensor([0, 9]))
    for k, shape in enumerate(prior.stage_shapes):
        assert tuple(prior.feature(k, z, cond).shape) == (2, *shape)
    assert prior.projection_kind("z") == "sphere" and prior.projection_kind("h") == "l1"


def test_forward_from_every_stage_equals_forward(prior):
    z = prior.sample_latent(3, generator=torch.Generator().manual_seed(1))
    cond = prior.condition(torch.tensor([1, 4, 7]))
    image = prior(z, cond)
    assert image.shape == (3, 1, 32, 32) and image.min() >= 0 and image.max() <= 1
    for k in range(prior.num_stages):
        assert torch.equal(prior.forward_from(k, prior.feature(k, z, cond), cond), image)


def test_conditioning_changes_the_image(prior):
    z = prior.sample_latent(1, generator=torch.Generator().manual_seed(2)).repeat(2, 1)
    images = prior(z, prior.condition(torch.tensor([0, 5])))
    assert (images[0] - images[1]).abs().max() > 1e-3


def test_bad_conditions_are_config_errors(prior):
    z = prior.sample_latent(1)
    with pytest.raises(ConfigError, match="class-conditional"):
        prior.condition(None)
    with pytest.raises(ConfigError, match="0..9"):
        prior.condition(torch.tensor([10]))
    with pytest.raises(ConfigError, match="cond="):
        prior(z, None)


# -- training -------------------------------------------------------------------------------------------------
def test_resumed_training_continues_exactly(tmp_path):
    images, labels = _tiny_data()
    straight = GANTrainer(
        images=torch.nn.functional.pad(images, (2, 2, 2, 2)), labels=labels, settings=SETTINGS
    )
    straight.train_step()
    straight.train_step()
    straight.save(tmp_path / CHECKPOINT_FILE)
    expected = straight.train_step()

    resumed = GANTrainer(
        images=torch.nn.functional.pad(images, (2, 2, 2, 2)), labels=labels, settings=SETTINGS
    )
    resumed.load(tmp_path / CHECKPOINT_FILE)
    assert resumed.step == 2
    assert resumed.train_step() == expected
    # the average stays outside autograd: no graph chained through the steps
    assert not any(p.requires_grad or p.grad_fn is not None for p in straight.ema.parameters())
    for a, b in zip(resumed.ema.state_dict().values(), straight.ema.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_restart_ema_starts_from_the_live_generator_and_is_saved(tmp_path):
    images, labels = _tiny_data()
    trainer = GANTrainer(images=torch.nn.functional.pad(images, (2, 2, 2, 2)), labels=labels, settings=SETTINGS)
    trainer.train_step()
    trainer.restart_ema()
    live = trainer.generator.state_dict()
    assert all(torch.equal(v, live[k]) for k, v in trainer.ema.state_dict().items())
    trainer.save(tmp_path / CHECKPOINT_FILE)
    again = GANTrainer(images=torch.nn.functional.pad(images, (2, 2, 2, 2)), labels=labels, settings=SETTINGS)
    again.load(tmp_path / CHECKPOINT_FILE)
    assert again.ema_start == 1


def test_train_prior_resumes_from_its_folder_and_exports(tmp_path):
    images, labels = _tiny_data()
    common = {
        "images": images,
        "labels": labels,
        "settings": SETTINGS,
        "sample_every": 0,
        "standing_samples": 8,
    }
    first = train_prior(out=tmp_path / "a", steps=2, **common)
    assert first.step == 2 and not first.interrupted
    resumed = train_prior(out=tmp_path / "a", steps=3, **common)
    straight = train_prior(out=tmp_path / "b", steps=3, **common)
    assert resumed.step == 3 and resumed.last_losses == straight.last_losses
    _, meta = read_checkpoint(tmp_path / "a" / CHECKPOINT_FILE)
    assert meta["step"] == 3 and len(meta["commands"]) == 2
    assert len(meta["code_revisions"]) == 2 and meta["data_sha256"] is None  # given images, not the IDX files
    assert (tmp_path / "a" / "samples" / "latest.png").is_file()
    info = json.loads((tmp_path / "a" / "fashion.json").read_text())
    assert info["steps"] == 3 and info["complete"] and info["torch"] == torch.__version__
    with pytest.raises(ConfigError, match="--seed"):
        train_prior(
            out=tmp_path / "a", steps=4, **{**common, "settings": TrainSettings(seed=4, batch_size=4)}
        )


def test_export_round_trip_loads_strictly(tmp_path):
    images, labels = _tiny_data()
    trainer = GANTrainer(
        images=torch.nn.functional.pad(images, (2, 2, 2, 2)), labels=labels, settings=SETTINGS
    )
    trainer.train_step()
    trainer.save(tmp_path / CHECKPOINT_FILE)
    target = export_generator(
        checkpoint=tmp_path, export_dir=tmp_path / "export", note="test", standing_samples=8
    )
    loaded = build_prior("fashion", weights=target)
    reference = standing_stats(trainer.ema, seed=SETTINGS.seed, batches=1, batch_size=8)
    z = loaded.sample_latent(2, generator=torch.Generator().manual_seed(0))
    labels2 = torch.tensor([3, 8])
    assert torch.equal(loaded(z, loaded.condition(labels2)), reference(z, labels2))
    assert json.loads(target.with_suffix(".json").read_text())["note"] == "test"


def test_cli_export_only_and_missing_checkpoint(tmp_path, capsys):
    images, labels = _tiny_data()
    trainer = GANTrainer(
        images=torch.nn.functional.pad(images, (2, 2, 2, 2)), labels=labels, settings=SETTINGS
    )
    trainer.save(tmp_path / CHECKPOINT_FILE)
    assert (
        main(
            [
                "train-prior",
                "--out",
                str(tmp_path),
                "--export-only",
                "--note",
                "snapshot",
                "--standing-samples",
                "8",
            ]
        )
        == 0
    )
    assert (tmp_path / "fashion.safetensors").is_file()
    assert main(["train-prior", "--out", str(tmp_path / "none"), "--export-only"]) == 2
    assert "train-prior --out" in capsys.readouterr().err


# -- loading errors -------------------------------------------------------------------------------------------
def test_missing_committed_weights_say_how_to_train(tmp_path, monkeypatch):
    monkeypatch.setattr(fashion_module, "WEIGHTS_FILE", tmp_path / "fashion.safetensors")
    with pytest.raises(DataNotFoundError, match="fedinvert train-prior"):
        FashionPrior()
    with pytest.raises(DataNotFoundError, match="no file"):
        FashionPrior(weights=tmp_path / "elsewhere.safetensors")


def test_corrupt_or_mismatched_weights_are_checkpoint_errors(tmp_path):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a safetensors file at all")
    with pytest.raises(CheckpointError):
        FashionPrior(weights=bad)
    from safetensors.torch import save_file

    wrong = tmp_path / "wrong.safetensors"
    save_file({"stem.weight": torch.zeros(3, 3)}, str(wrong))
    with pytest.raises(CheckpointError, match="does not match"):
        FashionPrior(weights=wrong)


# -- quality metrics ------------------------------------------------------------------------------------------
def test_frechet_distance_closed_forms():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(500, 6, generator=g, dtype=torch.float64)
    shift = torch.tensor([1.0, -2.0, 0.5, 0.0, 0.0, 3.0], dtype=torch.float64)
    assert quality.frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)
    # Equal covariances: the trace term vanishes and the distance is the squared distance of the means.
    assert quality.frechet_distance(a, a + shift) == pytest.approx(float(shift @ shift), rel=1e-6)


def test_class_agreement_and_prior_quality_on_tiny_inputs(prior):
    predicted, labels = torch.tensor([0, 1, 1, 3]), torch.tensor([0, 1, 2, 3])
    overall, per_class = quality.class_agreement(predicted, labels)
    assert overall == 0.75 and per_class[:4] == [1.0, 1.0, 0.0, 1.0]

    images, labels10 = _tiny_data(40)
    split = (torch.nn.functional.pad(images, (2, 2, 2, 2)), labels10)
    classifier = quality.FashionClassifier().eval()
    result = quality.prior_quality(prior, classifier, per_class=3, train=split, test=split)
    assert result["samples"] == 30 and 0.0 <= result["agreement"] <= 1.0
    assert result["fd_prior_test"] >= 0 and result["fd_train_test"] >= 0


@pytest.mark.skipif(not HAS_WEIGHTS, reason="committed fashion prior or classifier weights missing")
def test_committed_prior_makes_recognisable_classes():
    loaded = FashionPrior()
    classifier = quality.load_classifier()
    images, labels = quality.class_samples(loaded, per_class=20, seed=1)
    agreement, _ = quality.class_agreement(quality.predict(classifier, images), labels)
    assert agreement >= MEASURED_AGREEMENT - AGREEMENT_MARGIN


def test_ctrl_c_saves_the_last_whole_step(tmp_path, monkeypatch):
    images, labels = _tiny_data()
    original = GANTrainer.train_step

    def interrupted_step(self):
        losses = original(self)
        if self.step == 2:
            os.kill(os.getpid(), signal.SIGINT)
        return losses

    monkeypatch.setattr(GANTrainer, "train_step", interrupted_step)
    result = train_prior(
        out=tmp_path, steps=10, images=images, labels=labels, settings=SETTINGS, sample_every=0, standing_samples=8
    )
    assert result.interrupted and result.step == 2
    assert read_checkpoint(tmp_path / CHECKPOINT_FILE)[1]["step"] == 2
    assert not (tmp_path / "fashion.safetensors").exists()
