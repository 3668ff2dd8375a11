"""One smoke test per registered name: every attack, model, data set, metric and label method works."""

import pytest
import torch

from fedinvert.attacks import ATTACKS, LABEL_METHODS
from fedinvert.config import preset_names, resolve_config
from fedinvert.config.schema import resolve_keywords
from fedinvert.data import DATASETS, load_batch
from fedinvert.errors import DataNotFoundError
from fedinvert.metrics import METRICS
from fedinvert.models import MODELS, build_model
from fedinvert.observation import Capability
from fedinvert.priors import PRIORS
from fedinvert.runner import build_scenario, run

NEEDS_PRIOR = {"ggl", "gias", "gifd", "gifd-z", "gifd-f", "gifd-e"}


@pytest.mark.parametrize("name", ATTACKS.names())
def test_every_attack_runs_a_few_steps(name):
    args = [f"attack={name}", "model=convnet", "model.width=0.25", "dataset=synthetic", "image_size=16",
            "batch_size=2", "device=cpu", "progress=false", "seed=0"]
    if name == "trap_weights":  # its trap sits in a first linear layer that sees the image
        args[1:3] = ["model=mlp", "model.hidden=32"]
    if name == "lora_inversion":  # its patch-consistency prior needs a victim with a patch grid
        args[1:3] = ["model=vit", "model.depth=1"]
    keys = cfg_keys(name)
    if "compile" in keys:  # analytic attacks run no optimisation step to compile
        args.append("attack.compile=false")
    if ATTACKS.get(name).requires & {Capability.MALICIOUS_MODEL}:
        args.append("threat.server=malicious")
    cfg = resolve_config(args)
    shrunk = (("iterations", 2), ("steps_per_stage", 2), ("latent_steps", 2), ("finetune_steps", 2),
              ("restarts", 1), ("population", 4), ("group_start", 1), ("group_every", 1), ("steps", 2),
              ("width", 4), ("aux_batches", 4), ("epochs", 1), ("hidden", 8), ("sketch", 64), ("cache", False))
    for key, value in shrunk:
        if key in keys:
            cfg["attack"][key] = value
    if name in NEEDS_PRIOR:
        cfg["prior"] = {"name": "face-dcgan"}
        cfg["image_size"] = 16
    try:
        result = run(cfg, write=False)
    except DataNotFoundError as err:
        pytest.skip(str(err))
    images = result.reconstruction.images
    assert images.shape == (2, 3, 16, 16)
    assert images.min() >= 0 and images.max() <= 1
    assert result.reconstruction.iterations > 0


def cfg_keys(name):
    from fedinvert.config import class_keywords

    return set(class_keywords(ATTACKS.get(name)))


@pytest.mark.parametrize("name", MODELS.names())
def test_every_model_builds_and_classifies(name):
    model = build_model(name, in_channels=3, num_classes=7, image_size=32, seed=0)
    assert model(torch.rand(2, 3, 32, 32)).shape == (2, 7)


@pytest.mark.parametrize("name", DATASETS.names())
def test_every_dataset_loads_a_batch(name, tmp_path):
    kwargs = {}
    if name == "folder":
        from PIL import Image

        for cls in ("a", "b"):
            (tmp_path / cls).mkdir()
            Image.new("RGB", (12, 12), "red" if cls == "a" else "blue").save(tmp_path / cls / "x.png")
        kwargs["root"] = str(tmp_path)
    try:
        batch = load_batch(name, batch_size=2, image_size=16, seed=0, **kwargs)
    except DataNotFoundError as err:
        pytest.skip(str(err))
    assert batch.images.shape[0] == 2 and batch.images.shape[-1] == 16
    assert float(batch.images.min()) >= 0 and float(batch.images.max()) <= 1


@pytest.mark.parametrize("name", METRICS.names())
def test_every_metric_scores_identical_images_best(name):
    x = torch.rand(2, 3, 16, 16)
    y = (x + 0.1 * torch.randn_like(x)).clamp(0, 1)
    same, other = METRICS.get(name)(x, x), METRICS.get(name)(x, y)
    assert same.shape == (2,)
    if name == "mse":
        assert (same < other).all()
    else:
        assert (same > other).all()


@pytest.mark.parametrize("name", LABEL_METHODS.names())
def test_every_label_method_returns_batch_size_labels(name):
    cfg = resolve_config(["model=convnet", "model.width=0.25", "dataset=synthetic", "image_size=16",
                          "batch_size=1" if name == "idlg" else "batch_size=3", "dataset.unique_labels=true"])
    obs = build_scenario(cfg).observation
    labels = LABEL_METHODS.get(name)(obs, obs.batch_size)
    assert labels.shape == (obs.batch_size,) and labels.dtype == torch.long



@pytest.mark.parametrize("preset", preset_names())
def test_every_preset_names_valid_keywords(preset):
    cfg = resolve_config([f"preset={preset}"])
    MODELS.get(cfg["model"]["name"])
    DATASETS.get(cfg["dataset"]["name"])
    for group, registry, exclude in (("attack", ATTACKS, ("device", "prior")), ("prior", PRIORS, ())):
        section = dict(cfg[group] or {})
        if section:
            name = section.pop("name")
            factory, defaults = registry.entry(name)
            resolve_keywords(group, name, factory, section, preset=defaults, exclude=exclude)
