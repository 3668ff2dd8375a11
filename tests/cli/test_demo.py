"""The demo's configuration resolves to GIFD on the face prior (the run itself is `make demo`)."""

from fedinvert.cli import DEMO_ARGS
from fedinvert.config import resolve_config


def test_demo_is_gifd_on_a_real_face():
    cfg = resolve_config(DEMO_ARGS)
    assert cfg["attack"]["name"] == "gifd" and cfg["prior"]["name"] == "face-dcgan"
    assert cfg["dataset"]["name"] == "lfw" and cfg["image_size"] == 64
