"""The ViT victim and its LoRA adapters: shapes, which parameters train, what the client shares."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from fedinvert.attacks import GradientMatcher, infer_labels
from fedinvert.config import resolve_config
from fedinvert.errors import ConfigError, MissingCapabilityError
from fedinvert.fl import FedAvgClient, FedSGDClient
from fedinvert.models import ViT, build_model
from fedinvert.observation import Observation
from fedinvert.runner import build_scenario, run

pytestmark = pytest.mark.usefixtures("one_thread")

HAS_PEFT = importlib.util.find_spec("peft") is not None
needs_peft = pytest.mark.skipif(not HAS_PEFT, reason="LoRA needs peft: pip install 'fedinvert[peft]' (peft==0.21.2)")
IDENTITY = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))


def vit(seed: int = 0, *, image_size: int = 16, in_channels: int = 3, **options) -> ViT:
    model = build_model("vit", in_channels=in_channels, num_classes=5, image_size=image_size, seed=seed,
                        depth=2, **options)
    assert isinstance(model, ViT)
    return model


def adapter_names(depth: int, layers: tuple[str, ...] = ("attn.qkv",)) -> set[str]:
    return {f"blocks.{i}.{layer}.lora_{ab}.default.weight" for i in range(depth) for layer in layers for ab in "AB"}


@pytest.mark.parametrize("position", ["sincos", "learned"])
@pytest.mark.parametrize(("in_channels", "image_size", "patch_size"), [(3, 16, 4), (1, 32, 4), (3, 32, 8)])
def test_forward_gives_logits_per_image(position, in_channels, image_size, patch_size):
    model = vit(image_size=image_size, in_channels=in_channels, patch_size=patch_size, position=position)
    logits = model(torch.rand(3, in_channels, image_size, image_size))
    assert logits.shape == (3, 5) and torch.isfinite(logits).all()
    assert model.grid == image_size // patch_size
    assert model.pos_embed.shape == (1, model.grid**2 + 1, 64)  # one token per patch and the class token


def test_sincos_position_embeddings_are_a_buffer_learned_ones_a_parameter():
    assert "pos_embed" in dict(vit().named_buffers())
    assert "pos_embed" in dict(vit(position="learned").named_parameters())


@pytest.mark.parametrize(("options", "message"), [
    ({"image_size": 18}, "multiple of patch_size"),
    ({"dim": 30, "heads": 4}, "multiple of heads"),
    ({"lora_rank": -1}, "lora_rank"),
    ({"lora_targets": ("qkv", "ffn")}, "lora_targets"),
])
def test_bad_options_are_refused(options, message):
    with pytest.raises(ConfigError, match=message):
        vit(**options)


def test_without_lora_every_parameter_is_shared():
    model = vit()
    update = FedSGDClient().update(model, torch.randn(2, 3, 16, 16), torch.tensor([0, 1]))
    assert set(update) == {n for n, _ in model.named_parameters()}
    assert "patch_embed.weight" in update and "head.weight" in update


@needs_peft
def test_lora_trains_and_shares_only_the_adapters():
    # Prepare: rank-2 adapters on every block's qkv projection
    model = vit(lora_rank=2)
    # Execute
    update = FedSGDClient().update(model, torch.randn(2, 3, 16, 16), torch.tensor([0, 1]))
    delta = FedAvgClient(local_epochs=1, local_batch_size=1, lr=0.1).update(
        model, torch.randn(2, 3, 16, 16), torch.tensor([0, 1]))
    # Assert: the adapters alone are trainable, shared and observed; the base weights are frozen and absent
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == adapter_names(2)
    assert set(update) == set(delta) == trainable
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert {"patch_embed.weight", "blocks.0.attn.qkv.base_layer.weight", "head.weight", "cls_token"} <= frozen
    assert update["blocks.0.attn.qkv.lora_A.default.weight"].shape == (2, 64)
    assert update["blocks.0.attn.qkv.lora_B.default.weight"].shape == (192, 2)
    obs = Observation(model=model, update=update, kind="gradient", image_shape=(3, 16, 16), num_classes=5,
                      normalization=IDENTITY, batch_size=2)
    assert set(obs.parameter_names) == trainable
    assert set(GradientMatcher(obs, render=lambda x: (x, torch.tensor([0, 1]))).names) == trainable


@needs_peft
def test_zero_initialised_adapters_leave_the_base_model_unchanged():
    # Prepare: the same seed with and without adapters (peft's default init: B = 0)
    base, adapted = vit(seed=3), vit(seed=3, lora_rank=4, lora_targets=("qkv", "proj", "mlp"))
    randomised = vit(seed=3, lora_rank=4, lora_init="random")
    x = torch.randn(4, 3, 16, 16)
    # Execute / Assert: the adapter adds exactly zero until it trains; a random B changes the output
    assert torch.equal(adapted(x), base(x))
    assert not torch.allclose(randomised(x), base(x), atol=1e-4)
    assert torch.equal(dict(adapted.named_parameters())["blocks.1.mlp.fc1.base_layer.weight"],
                       dict(base.named_parameters())["blocks.1.mlp.fc1.weight"])


@needs_peft
def test_zero_init_gives_zero_A_gradients_and_lora_head_shares_the_head():
    model = vit(lora_rank=2, lora_targets=("proj", "mlp"), lora_head=True)
    update = FedSGDClient().update(model, torch.randn(2, 3, 16, 16), torch.tensor([0, 1]))
    assert set(update) == adapter_names(2, ("attn.proj", "mlp.fc1", "mlp.fc2")) | {"head.weight", "head.bias"}
    # B = 0: A's gradient Bᵀ·(…) is exactly zero, only B's carries information (the ViT's docstring)
    assert torch.count_nonzero(update["blocks.0.attn.proj.lora_A.default.weight"]) == 0
    assert torch.count_nonzero(update["blocks.0.attn.proj.lora_B.default.weight"]) > 0


@needs_peft
def test_label_inference_without_the_head_says_what_to_grant():
    model = vit(lora_rank=2)
    update = FedSGDClient().update(model, torch.randn(1, 3, 16, 16), torch.tensor([3]))
    obs = Observation(model=model, update=update, kind="gradient", image_shape=(3, 16, 16), num_classes=5,
                      normalization=IDENTITY, batch_size=1)
    with pytest.raises(MissingCapabilityError, match="threat.labels=known"):
        infer_labels(obs)


@needs_peft
@pytest.mark.parametrize("defense", ["gaussian_noise", "pruning", "clipping", "quantization", "secure_aggregation",
                                     "dp_sgd"])
def test_defences_act_on_the_shared_adapters_alone(defense):
    if defense == "dp_sgd":
        pytest.importorskip("opacus")
    cfg = resolve_config(["model=vit", "model.depth=1", "model.lora_rank=2", "dataset=synthetic", "image_size=16",
                          "batch_size=2", "threat.labels=known", "device=cpu", f"defense={defense}"])
    obs = build_scenario(cfg).observation
    assert set(obs.update) == adapter_names(1)


@needs_peft
def test_a_saved_lora_observation_is_attacked_again(tmp_path):
    # Prepare: a run on the LoRA victim written to disk
    args = ["attack=inverting_gradients", "attack.iterations=2", "attack.compile=false", "model=vit",
            "model.depth=1", "model.lora_rank=2", "dataset=synthetic", "image_size=16", "batch_size=1",
            "threat.labels=known", "device=cpu", "progress=false", "metrics.st_lpips=false"]
    first = run(resolve_config([*args, f"out={tmp_path / 'a'}"]))
    # Execute: re-attack what the server saw
    again = run(resolve_config(["attack=inverting_gradients", "attack.iterations=2", "attack.compile=false",
                                "threat.labels=known", "device=cpu", "progress=false", "metrics.st_lpips=false",
                                f"observation={tmp_path / 'a'}"]), write=False)
    # Assert: the rebuilt victim has the same trainable adapters and the same observed update
    saved = again.scenario.observation
    assert set(saved.update) == set(first.scenario.observation.update) == adapter_names(1)
    for name, tensor in saved.update.items():
        assert torch.equal(tensor, first.scenario.observation.update[name])
    assert {n for n, p in saved.model.named_parameters() if p.requires_grad} == adapter_names(1)
