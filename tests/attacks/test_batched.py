"""Independent private batches as chains of one vmapped or grouped step (`BatchedMatcher`, `reconstruct_batched`,
`fedinvert.runner.run_batched`): the same numbers as separate runs, to float32 rounding."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from fedinvert.attacks import ATTACKS
from fedinvert.attacks.objectives import BatchedMatcher, GradientMatcher, batch_refusal, total_variation
from fedinvert.attacks.optimization import inverting_gradients
from fedinvert.config import resolve_config
from fedinvert.fl import FedSGDClient
from fedinvert.models import build_model
from fedinvert.observation import Observation
from fedinvert.runner import run_batched

pytestmark = pytest.mark.usefixtures("one_thread")

SIZE, CLASSES = 16, 10


def observation(seed: int, *, name: str = "lenet-dlg", batch: int = 1, mode: str = "eval") -> Observation:
    """A victim initialised from ``seed`` and the gradient of a private batch drawn from it."""
    model = build_model(name, in_channels=3, num_classes=CLASSES, image_size=SIZE, seed=seed)
    g = torch.Generator().manual_seed(100 + seed)
    private = torch.rand(batch, 3, SIZE, SIZE, generator=g) * 2 - 1
    labels = torch.randint(0, CLASSES, (batch,), generator=g)
    return Observation(
        model=model, update=FedSGDClient(mode=mode).update(model, private, labels), kind="gradient",
        image_shape=(3, SIZE, SIZE), num_classes=CLASSES, normalization=((0.5,) * 3, (0.5,) * 3), batch_size=batch,
        labels=labels,
    )


def reg(inputs: torch.Tensor, variables: tuple[torch.Tensor, ...]) -> torch.Tensor:
    return 1e-2 * total_variation(inputs)


def matcher(obs: Observation, labels: torch.Tensor, *, functional: bool, distance: str = "cosine") -> GradientMatcher:
    return GradientMatcher(obs, distance=distance, render=lambda x: (x, labels), regularizer=reg, functional=functional)


@pytest.mark.parametrize("distance", ["cosine", "l2"])
@pytest.mark.parametrize(("name", "batch"), [("lenet-dlg", 1), ("lenet-dlg", 3), ("convnet", 2)])
@pytest.mark.parametrize("grouped", [False, True], ids=["vmapped", "grouped"])
def test_a_batched_step_is_each_observations_own_step(distance: str, name: str, batch: int, grouped: bool) -> None:
    observations = [observation(seed, name=name, batch=batch) for seed in (0, 1, 2)]
    labels = [obs.labels for obs in observations]
    restarts = 2
    x = torch.randn(3 * restarts, batch, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(7))
    batched = BatchedMatcher([matcher(o, y, functional=True, distance=distance) for o, y in zip(observations, labels, strict=True)],
                             labels, restarts=restarts, distance=distance, regularizer=reg, grouped=grouped)
    assert (batched.grouped is not None) == grouped
    (grad,), loss, dist = batched.step([x])
    assert batched.evaluations == 3 * restarts
    for k, (obs, y) in enumerate(zip(observations, labels, strict=True)):
        part = slice(k * restarts, (k + 1) * restarts)
        (own_grad,), own_loss, own_dist = matcher(obs, y, functional=False, distance=distance).step([x[part]])
        assert float((grad[part] - own_grad).norm() / own_grad.norm()) < 1e-4
        torch.testing.assert_close(loss[part], own_loss, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(dist[part], own_dist, rtol=1e-5, atol=1e-6)
    # the victims differ (seeds 0, 1, 2): a step with the first victim's weights for all would not match
    assert float((grad[2:4] - grad[0:2]).norm()) > 0


def test_what_cannot_share_a_step_is_refused() -> None:
    a, b = observation(0), observation(1)
    y = a.labels
    assert batch_refusal([matcher(a, y, functional=True), matcher(b, y, functional=True)]) is None
    convnet = [observation(s, name="convnet", mode="eval") for s in (0, 1)]
    with torch.no_grad():  # different running statistics: an eval-mode victim's buffers differ
        next(m for m in convnet[1].model.modules() if isinstance(m, torch.nn.BatchNorm2d)).running_mean.add_(1.0)
    assert "buffers" in batch_refusal([matcher(o, y, functional=True) for o in convnet])
    assert "architectures" in batch_refusal([matcher(a, y, functional=True), matcher(convnet[0], y, functional=True)])
    assert "functional" in batch_refusal([matcher(a, y, functional=False), matcher(b, y, functional=False)])
    with pytest.raises(ValueError, match="cosine or l2"):
        BatchedMatcher([matcher(a, y, functional=True)], [y], restarts=1, distance="layer_cosine")
    ig = ATTACKS.build("inverting_gradients", iterations=5, device="cpu")
    assert ig.batch_refusal([a, b]) is None
    assert "batch sizes" in ig.batch_refusal([a, observation(1, batch=2)])
    assert "per observation" in ATTACKS.build("inverting_gradients", iterations=5, device="cpu",
                                              distance="layer_cosine").batch_refusal([a, b])
    assert "adds to" in ATTACKS.build("gradinversion", iterations=5, device="cpu").batch_refusal([a, b])
    with pytest.raises(ValueError, match="batch sizes"):
        ig.reconstruct_batched([a, observation(1, batch=2)], rngs=[torch.Generator(), torch.Generator()])


@pytest.mark.parametrize("form", ["vmap", "grouped", None], ids=["vmapped", "grouped", "probed"])
def test_reconstruct_batched_follows_each_separate_run(form: str | None, monkeypatch: pytest.MonkeyPatch) -> None:
    if form is not None:  # only this form to probe
        monkeypatch.setattr(inverting_gradients, "BATCHED_FORMS", (form,))
    observations = [observation(seed, batch=2) for seed in (0, 1, 2)]
    attack = ATTACKS.build("inverting_gradients", iterations=40, restarts=2, compile=False, device="cpu", log_every=10)

    def rngs() -> list[torch.Generator]:
        return [torch.Generator().manual_seed(50 + k) for k in range(3)]

    together = attack.reconstruct_batched(observations, rngs=rngs())
    for k, (obs, rng) in enumerate(zip(observations, rngs(), strict=True)):
        alone = attack.reconstruct(obs, rng=rng)
        mine = together[k]
        assert mine.extras["batched"] == {"runs": 3, "position": k, "form": together[0].extras["batched"]["form"]}
        assert mine.extras["batched"]["form"] in ((form,) if form else ("vmap", "grouped"))
        assert mine.iterations == alone.iterations == 80  # 40 steps × 2 restarts (alone: no probe counted)
        assert mine.extras["restart"] == alone.extras["restart"]
        assert abs(mine.score - alone.score) < 1e-3 * max(alone.score, 1e-3)
        assert float((mine.images - alone.images).abs().max()) < 1e-3
        assert [h["step"] for h in mine.history] == [h["step"] for h in alone.history] == [10, 20, 30, 40]
        assert mine.history[-1]["best_distance"] == pytest.approx(alone.history[-1]["best_distance"], rel=1e-3)


def configs(tmp_path: Path, seeds: list[int], **extra: str) -> list[dict]:
    overrides = ["attack=inverting_gradients", "model=lenet-dlg", "dataset=photos", "image_size=16", "batch_size=1",
                 "attack.iterations=150", "attack.compile=false", "device=cpu", "progress=false",
                 *(f"{k}={v}" for k, v in extra.items())]
    return [resolve_config([*overrides, f"seed={s}", f"out={tmp_path / f'run{s}'}"]) for s in seeds]


def test_run_batched_writes_each_run_folder_and_each_leaks(tmp_path: Path) -> None:
    results = run_batched(configs(tmp_path, [0, 1, 2]), argv=["test"], measure=False)
    assert all(not isinstance(r, Exception) for r in results), results
    for seed in (0, 1, 2):
        folder = tmp_path / f"run{seed}"
        run = json.loads((folder / "run.json").read_text())
        metrics = json.loads((folder / "metrics.json").read_text())
        assert run["attack_details"]["batched"]["runs"] == 3 and run["seed"] == seed
        assert run["timings"]["batched_attack_seconds"] == pytest.approx(3 * run["timings"]["attack_seconds"])
        assert (folder / "reconstruction.png").is_file() and (folder / "loss.png").is_file()
        # a margin over the no-leak reference of its own batch (DESIGN §8)
        for image in metrics["per_image"]:
            assert image["leakage_db"] > 3.0, (seed, image)
    assert len({json.dumps(r.scenario.info["data"], sort_keys=True, default=str) for r in results}) == 3


def test_run_batched_keeps_going_past_a_bad_run_and_falls_back_when_it_cannot_batch(tmp_path: Path) -> None:
    cfgs = configs(tmp_path, [0, 1, 2])
    cfgs[1]["seed"] = -5  # refused by the config check: that run alone fails, and leaves no folder
    results = run_batched(cfgs, argv=["test"], measure=False)
    assert isinstance(results[1], Exception) and "seed" in str(results[1])
    assert not (tmp_path / "run1").exists()
    assert results[0].run_info["attack_details"]["batched"]["runs"] == 2
    fallback = run_batched(configs(tmp_path / "fb", [0, 1], **{"attack.distance": "layer_cosine",
                                                               "attack.iterations": "5"}), argv=["test"])
    assert all("batched" not in r.run_info["attack_details"] for r in fallback)
    assert all((tmp_path / "fb" / f"run{s}" / "run.json").is_file() for s in (0, 1))
    note = json.loads((tmp_path / "fb" / "run0" / "run.json").read_text())["batched"]
    assert note["runs"] == 2 and "per observation" in note["refused"]


def test_batching_is_measured_first_and_skipped_where_it_does_not_pay(tmp_path: Path, monkeypatch) -> None:
    from fedinvert.attacks.optimization.inverting_gradients import PixelAttack

    timing = PixelAttack.batch_timing(ATTACKS.build("inverting_gradients", iterations=5, device="cpu"),
                                      [observation(0), observation(1)])
    assert timing["batched_step_seconds"] > 0 and timing["separate_steps_seconds"] > 0
    monkeypatch.setattr(PixelAttack, "batch_timing",
                        lambda self, obs: {"batched_step_seconds": 2.0, "separate_steps_seconds": 1.0})
    slower = run_batched(configs(tmp_path / "slow", [0, 1]), argv=["test"])
    assert all("batched" not in r.run_info["attack_details"] for r in slower)
    assert all("not faster" in r.run_info["batched"]["refused"] for r in slower)
    monkeypatch.setattr(PixelAttack, "batch_timing",
                        lambda self, obs: {"batched_step_seconds": 1.0, "separate_steps_seconds": 2.0})
    faster = run_batched(configs(tmp_path / "fast", [0, 1]), argv=["test"])
    assert all(r.run_info["attack_details"]["batched"]["batched_step_seconds"] == 1.0 for r in faster)


@pytest.mark.slow
def test_a_compiled_batched_step_follows_the_uncompiled_one() -> None:
    observations = [observation(seed) for seed in (0, 1)]

    def run(compile: bool) -> list:
        attack = ATTACKS.build("inverting_gradients", iterations=20, compile=compile, device="cpu")
        return attack.reconstruct_batched(observations, rngs=[torch.Generator().manual_seed(k) for k in range(2)])

    compiled, eager = run(True), run(False)
    for c, e in zip(compiled, eager, strict=True):
        assert c.extras["batched"]["form"] == "compiled" and e.extras["batched"]["form"] in ("vmap", "grouped")
        assert c.extras["compile"]["compiled"] and c.extras["compile_seconds"] > 0
        assert float((c.images - e.images).abs().max()) < 1e-3


def test_runs_that_differ_in_their_images_batch_when_those_are_the_replicates(tmp_path: Path) -> None:
    cfgs = [resolve_config(["attack=inverting_gradients", "model=lenet-dlg", "dataset=photos", "image_size=16",
                            "batch_size=1", "attack.iterations=5", "attack.compile=false", "device=cpu",
                            "progress=false", f"dataset.indices=[{i}]", f"out={tmp_path / f'run{i}'}"])
            for i in (0, 3)]
    with pytest.raises(Exception, match="differ only in seed"):
        run_batched(cfgs, argv=["test"], measure=False)
    results = run_batched(cfgs, argv=["test"], measure=False, varying=("dataset.indices",))
    assert [r.run_info["attack_details"]["batched"]["runs"] for r in results] == [2, 2]
    assert [r.scenario.info["data"]["indices"] for r in results] == [[0], [3]]
