"""``attack.compile=auto``: the measured decision, the compile-time record and what run.json reports."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
import torch

from fedinvert.attacks import ATTACKS, compilation
from fedinvert.errors import ConfigError
from fedinvert.fl import FedSGDClient
from fedinvert.models import build_model
from fedinvert.observation import Observation


@pytest.fixture(autouse=True)
def own_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test reads and writes the record in its own inductor cache folder."""
    folder = tmp_path / "inductor"
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(folder))
    monkeypatch.setattr(compilation, "_COMPILED_HERE", set())
    monkeypatch.setattr(compilation, "_EAGER_FORM_HERE", {})
    return folder


class Built:
    """A stand-in step object in one form: counts its probe calls, takes a compile key."""

    def __init__(self, form: str) -> None:
        self.form = form
        self.grouped_refusal: str | None = None
        self.compiled = form in (compilation.COMPILED, compilation.COMPILED_LOOP)
        self.calls = 0
        self.clock = compilation.CompileClock(torch.device("cpu")) if self.compiled else None
        if self.clock is not None:
            self.clock.seconds = 3.0

    @property
    def compile_key(self) -> str | None:
        return self.clock.key if self.clock is not None else None

    def step(self, seconds: float) -> None:
        self.calls += 1
        time.sleep(seconds)


def decide(setting: bool | str, *, steps: int, step_seconds: float, tensors: int = 10, restarts: int = 1,
           vmapped_seconds: float | None = None, grouped_seconds: float | None = None):
    """``choose`` over stand-ins; the grouped form refuses (as for a victim it cannot group) unless timed."""
    built: list[Built] = []

    def build(form: str) -> Built:
        built.append(Built(form))
        if form == compilation.GROUPED and grouped_seconds is None:
            built[-1].grouped_refusal = "a stand-in without a grouped form"
        return built[-1]

    def probe(b: Built) -> None:
        seconds = {compilation.VMAP: vmapped_seconds, compilation.GROUPED: grouped_seconds}.get(b.form)
        b.step(step_seconds if seconds is None else seconds)

    chosen, decision = compilation.choose(
        setting, steps=steps, build=build, probe=probe, key=lambda: "k", tensors=lambda: tensors,
        device=torch.device("cpu"), try_vmap=restarts > 1,
    )
    return chosen, decision, built


def test_the_cache_folder_is_found_as_torch_finds_it(monkeypatch: pytest.MonkeyPatch) -> None:
    from torch._inductor.runtime.cache_dir_utils import cache_dir

    assert compilation.inductor_cache_dir() == Path(cache_dir())
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR")
    found = compilation.inductor_cache_dir()
    assert found == Path(cache_dir())
    os.environ.pop("TORCHINDUCTOR_CACHE_DIR", None)  # torch's function sets it; leave the process as it was


def test_forced_settings_of_one_restart_build_once_without_a_probe() -> None:
    for setting, compiled in ((True, True), ("true", True), (False, False), ("false", False)):
        chosen, decision, built = decide(setting, steps=10**6, step_seconds=0.01)
        assert len(built) == 1 and chosen.compiled is compiled and chosen.calls == 0
        assert decision.compiled is compiled and decision.reason == "forced by attack.compile"
        assert chosen.compile_key == ("k" if compiled else None)


def test_a_small_saving_stays_eager_without_reading_the_record(own_cache: Path) -> None:
    compilation.remember("k", 0.01)  # even a record this cheap is not consulted below the floor
    chosen, decision, built = decide("auto", steps=100, step_seconds=0.002)
    # 100 × (first step ≥ 2 ms) × 0.25 is far below the 1 s floor: the first step's time settles it, no timed steps
    assert not decision.compiled and len(built) == 1 and chosen.calls == decision.probe_calls == 1
    assert decision.predicted_compile_seconds is None and "from the first step's time" in decision.reason
    assert decision.predicted_saving_seconds == pytest.approx(
        100 * decision.eager_step_seconds * (1 - compilation.COMPILED_STEP_RATIO)
    )
    assert 0.002 <= decision.eager_step_seconds < 0.05


def test_a_first_step_that_does_not_settle_the_floor_is_followed_by_timed_steps() -> None:
    # 4000 × 5 ms × 0.25 = 5 s, above the floor: the step is timed as the mean of PROBE_STEPS more calls
    chosen, decision, _ = decide("auto", steps=4000, step_seconds=0.005)
    assert chosen.calls == decision.probe_calls == 1 + compilation.PROBE_STEPS
    assert "from the first step's time" not in decision.reason


def test_without_a_record_the_cold_estimate_decides() -> None:
    # saving ≈ 4000 × 5 ms × 0.25 = 5 s; the cold estimate for 10 tensors is 35 s: eager
    _, decision, built = decide("auto", steps=4000, step_seconds=0.005, tensors=10)
    assert not decision.compiled and len(built) == 1
    assert decision.predicted_compile_seconds == compilation.cold_estimate(10) > decision.predicted_saving_seconds
    assert "cold estimate" in decision.reason


def test_a_recorded_cheap_compilation_is_chosen_and_a_costly_one_is_not() -> None:
    compilation.remember("k", 2.0)  # recorded by an earlier process
    compilation._COMPILED_HERE.clear()
    chosen, decision, built = decide("auto", steps=4000, step_seconds=0.005)
    assert decision.compiled and [b.form for b in built] == ["eager", "compiled"] and chosen.compile_key == "k"
    assert decision.predicted_compile_seconds == 2.0 and "recorded" in decision.reason
    assert compilation.finished(decision, chosen)["compile_seconds"] == 3.0
    compilation._COMPILED_HERE.clear()
    compilation.remember("k", 30.0)  # the same step, when compiling it cost more than it saves
    compilation._COMPILED_HERE.clear()
    _, decision, built = decide("auto", steps=4000, step_seconds=0.005)
    assert not decision.compiled and len(built) == 1
    compilation.remember_ratio("k", 0.9)  # a measured ratio replaces the default in the saving
    _, decision, _ = decide("auto", steps=4000, step_seconds=0.005)
    assert decision.step_ratio == 0.9 and "measured" in decision.reason
    assert decision.predicted_saving_seconds == pytest.approx(4000 * decision.eager_step_seconds * 0.1)


def forget_forms(own_cache: Path) -> None:
    """A fresh process on a fresh machine: no restart form chosen in this process or recorded."""
    compilation._EAGER_FORM_HERE.clear()
    (own_cache / compilation.FORMS_NAME).unlink(missing_ok=True)


def test_several_restarts_run_in_the_faster_uncompiled_form_and_keep_it(own_cache: Path) -> None:
    chosen, decision, built = decide("false", steps=10, step_seconds=0.02, restarts=4, vmapped_seconds=0.004)
    assert chosen.form == "vmap" and [b.form for b in built] == ["eager", "vmap", "grouped"]
    assert decision.vmapped_step_seconds < decision.looped_step_seconds and decision.form == "vmap"
    assert decision.form_source == "probed" and not decision.compiled
    assert decision.grouped_step_seconds is None and decision.grouped_refusal == "a stand-in without a grouped form"
    chosen, decision, built = decide("auto", steps=10, step_seconds=0.02, restarts=4, vmapped_seconds=0.004)
    assert [b.form for b in built] == ["vmap"] and decision.looped_step_seconds is None  # kept in this process
    assert decision.form_source == "chosen earlier in this process"
    forget_forms(own_cache)
    chosen, decision, _ = decide("auto", steps=10, step_seconds=0.004, restarts=4, vmapped_seconds=0.02)
    assert chosen.form == "eager" and decision.form == "eager"  # looping wins on large victims (ResNet-18)


def test_the_restart_form_is_recorded_so_later_processes_step_alike(own_cache: Path) -> None:
    decide("false", steps=10, step_seconds=0.02, restarts=4, vmapped_seconds=0.004)  # vmap probes faster
    assert compilation.recorded_form("k") == "vmap"
    compilation._EAGER_FORM_HERE.clear()  # a later process on this machine, where looping now times faster
    chosen, decision, built = decide("false", steps=10, step_seconds=0.004, restarts=4, vmapped_seconds=0.02)
    assert chosen.form == "vmap" and [b.form for b in built] == ["vmap"]  # the recorded form, nothing re-probed
    assert decision.form_source == "recorded on this machine" and decision.looped_step_seconds is None
    (own_cache / compilation.FORMS_NAME).write_text("{not json")  # a damaged record is probed again
    compilation._EAGER_FORM_HERE.clear()
    assert compilation.recorded_form("k") is None
    chosen, decision, _ = decide("false", steps=10, step_seconds=0.004, restarts=4, vmapped_seconds=0.02)
    assert chosen.form == "eager" and decision.form_source == "probed" and compilation.recorded_form("k") == "eager"


def test_the_grouped_form_is_probed_beside_the_others_and_a_refused_one_never_chosen(own_cache: Path) -> None:
    chosen, decision, built = decide("false", steps=10, step_seconds=0.02, restarts=4, vmapped_seconds=0.012,
                                     grouped_seconds=0.004)
    assert chosen.form == decision.form == "grouped" and [b.form for b in built] == ["eager", "vmap", "grouped"]
    assert decision.grouped_step_seconds < decision.vmapped_step_seconds < decision.looped_step_seconds
    assert decision.grouped_refusal is None and compilation.recorded_form("k") == "grouped"
    compilation._EAGER_FORM_HERE.clear()  # a later process takes the recorded grouped form, probing only it
    chosen, decision, built = decide("false", steps=10, step_seconds=0.02, restarts=4, grouped_seconds=0.004)
    assert chosen.form == "grouped" and [b.form for b in built] == ["grouped"]
    compilation._EAGER_FORM_HERE.clear()  # recorded grouped, refused now (say, a changed victim): looped instead
    chosen, decision, built = decide("false", steps=10, step_seconds=0.02, restarts=4)
    assert chosen.form == "eager" and [b.form for b in built] == ["grouped", "eager"]
    assert decision.grouped_refusal == "a stand-in without a grouped form"
    forget_forms(own_cache)
    compilation.remember("k", 0.5)
    compilation._COMPILED_HERE.clear()
    chosen, decision, _ = decide("auto", steps=4000, step_seconds=0.02, restarts=4, vmapped_seconds=0.03,
                                 grouped_seconds=0.004)
    assert decision.compiled and chosen.form == "compiled"  # grouping won: batching pays, the compiled step vmaps


def test_a_compiled_step_loops_its_restarts_where_looping_won(own_cache: Path) -> None:
    compilation.remember("k", 0.5)  # recorded by an earlier process
    compilation._COMPILED_HERE.clear()
    chosen, decision, _ = decide("auto", steps=4000, step_seconds=0.004, restarts=4, vmapped_seconds=0.02)
    assert decision.compiled and chosen.form == decision.form == "compiled_loop"
    forget_forms(own_cache)
    compilation._COMPILED_HERE.clear()
    chosen, decision, _ = decide("auto", steps=4000, step_seconds=0.02, restarts=4, vmapped_seconds=0.004)
    assert decision.compiled and chosen.form == decision.form == "compiled"
    forget_forms(own_cache)
    chosen, decision, built = decide(True, steps=10, step_seconds=0.004, restarts=4, vmapped_seconds=0.02)
    assert chosen.form == decision.form == "compiled_loop" and decision.compiled  # forced, yet the loop won
    assert [b.form for b in built] == ["eager", "vmap", "grouped", "compiled_loop"]
    chosen, _, built = decide(True, steps=10, step_seconds=0.004, restarts=1)
    assert chosen.form == "compiled" and len(built) == 1 and chosen.calls == 0  # one restart: no probe


def test_a_step_compiled_in_this_process_costs_nothing_and_keeps_its_record() -> None:
    compilation.remember("k", 40.0)  # the first compilation in this process: recorded
    compilation.remember("k", 0.01)  # a reuse of its code: not what a fresh process pays
    assert compilation.recorded_seconds("k") == 40.0
    _, decision, _ = decide("auto", steps=4000, step_seconds=0.005)
    assert decision.compiled and decision.predicted_compile_seconds == 0.0
    assert "already in this process" in decision.reason


def test_the_record_survives_a_corrupt_file_and_lives_in_the_inductor_cache(own_cache: Path) -> None:
    own_cache.mkdir(parents=True)
    (own_cache / compilation.RECORD_NAME).write_text("{not json")
    assert compilation.recorded_seconds("k") is None
    compilation.remember("k", 1.25)
    compilation.remember("j", 2.5)
    compilation.remember_ratio("k", 0.5)
    compilation.remember_ratio("absent", 0.5)  # a ratio without a compile time is not kept
    assert json.loads((own_cache / compilation.RECORD_NAME).read_text()) == {
        "j": {"seconds": 2.5}, "k": {"seconds": 1.25, "ratio": 0.5}
    }
    assert compilation.recorded_seconds("k") == 1.25 and compilation.recorded_ratio("j") is None


def test_keys_tell_victims_and_shapes_apart() -> None:
    lenet = build_model("lenet-dlg", in_channels=3, num_classes=10, image_size=32, seed=0)
    convnet = build_model("convnet", in_channels=3, num_classes=10, image_size=32, seed=0)
    cpu = torch.device("cpu")
    key = compilation.step_key("IG", [lenet], [(1, 1, 3, 32, 32)], cpu)
    assert key == compilation.step_key("IG", [lenet], [(1, 1, 3, 32, 32)], cpu)
    assert key != compilation.step_key("IG", [convnet], [(1, 1, 3, 32, 32)], cpu)
    assert key != compilation.step_key("IG", [lenet], [(1, 8, 3, 32, 32)], cpu)
    assert key != compilation.step_key("GIFD:stage0", [lenet], [(1, 1, 3, 32, 32)], cpu)


def test_unknown_settings_are_refused() -> None:
    with pytest.raises(ConfigError, match="attack.compile must be auto, true or false"):
        compilation.check_setting("sometimes")
    with pytest.raises(ConfigError, match="attack.compile"):
        ATTACKS.build("inverting_gradients", compile="yes", device="cpu")


def lenet_observation() -> tuple[torch.nn.Module, torch.Tensor, Observation]:
    """DLG's LeNet at 16 px and the gradient of one random image of class 3."""
    model = build_model("lenet-dlg", in_channels=3, num_classes=10, image_size=16, seed=0).eval()
    x, labels = torch.rand(1, 3, 16, 16), torch.tensor([3])
    obs = Observation(model=model, update=FedSGDClient(mode="eval").update(model, x, labels), kind="gradient",
                      image_shape=(3, 16, 16), num_classes=10, normalization=((0.0,) * 3, (1.0,) * 3),
                      batch_size=1, labels=labels)
    return model, labels, obs


def test_an_attack_reports_its_decision_and_does_not_count_the_probe() -> None:
    model, labels, obs = lenet_observation()
    attack = ATTACKS.build("inverting_gradients", iterations=20, compile="auto", device="cpu", log_every=20)
    rec = attack.reconstruct(obs, rng=torch.Generator().manual_seed(0))
    assert rec.iterations == 20  # the probe's steps are not counted
    assert rec.extras["compile"]["setting"] == "auto" and rec.extras["compile"]["compiled"] is False
    assert rec.extras["compile"]["steps"] == 20 and rec.extras["compile_seconds"] == 0.0
    eager = ATTACKS.build("inverting_gradients", iterations=20, compile=False, device="cpu", log_every=20)
    again = eager.reconstruct(obs, rng=torch.Generator().manual_seed(0))
    assert torch.equal(rec.images, again.images)  # deciding changed nothing in the eager run


@pytest.mark.slow  # compiles a double-backward graph: 5-30 s here
def test_a_compiled_run_records_its_cost_and_auto_then_compiles() -> None:
    model, labels, obs = lenet_observation()
    forced = ATTACKS.build("inverting_gradients", iterations=5, compile=True, device="cpu", log_every=5)
    rec = forced.reconstruct(obs, rng=torch.Generator().manual_seed(0))
    key = compilation.step_key("InvertingGradients", [model], [(1, 1, 3, 16, 16)], torch.device("cpu"))
    assert rec.extras["compile_seconds"] > 0
    assert compilation.recorded_seconds(key) == pytest.approx(rec.extras["compile_seconds"], abs=1e-3)
    auto = ATTACKS.build("inverting_gradients", iterations=10**6, compile="auto", device="cpu", log_every=10**6)
    matcher, decision = compilation.choose(
        "auto", steps=auto.iterations, build=lambda form: auto.make_matcher(obs, labels, form=form),
        probe=lambda m: m.step([torch.rand(1, 1, 3, 16, 16)]), key=lambda: key, tensors=lambda: 8,
        device=torch.device("cpu"),
    )
    assert decision.compiled and matcher.compiled and "already in this process" in decision.reason
    matcher.clock.key = key
    for _ in range(4):
        matcher.step([torch.rand(1, 1, 3, 16, 16)])
    recorded = compilation.finished(decision, matcher)
    assert 0 < recorded["measured_step_ratio"] < 2 and compilation.recorded_ratio(key) == pytest.approx(
        recorded["measured_step_ratio"], abs=1e-3)


def test_run_json_holds_the_decision(tmp_path: Path) -> None:
    from fedinvert.cli import main

    out = tmp_path / "run"
    code = main(["attack", "attack=inverting_gradients", "attack.iterations=3", "attack.restarts=2",
                 "dataset=synthetic", "batch_size=1", "image_size=8", "model=lenet-dlg", "progress=false",
                 "device=cpu", f"out={out}"])
    assert code == 0
    info = json.loads((out / "run.json").read_text())
    decision = info["attack_details"]["compile"]
    assert decision["setting"] == "auto" and decision["compiled"] is False and decision["steps"] == 3
    assert decision["form"] in ("eager", "vmap", "grouped") and decision["looped_step_seconds"] > 0
    assert decision["vmapped_step_seconds"] > 0 and decision["grouped_step_seconds"] > 0
    assert "less than any compilation" in decision["reason"] and "grouped_refusal" not in decision
    assert info["timings"]["compile_seconds"] == 0.0
    assert json.loads((out / "metrics.json").read_text())["iterations"] == 6  # 3 steps × 2 restarts, no probe


def test_a_step_checks_dynamos_guards_on_its_first_call_only() -> None:
    """Two steps compiled from one function (two GIFD stages, say) each get their own graph on their first call,
    which checks every guard; later calls check only the guards that tell those graphs apart, and still reach
    their own. A later call that would need a new graph is not one a step makes: it reuses its graph (the
    price of skipping the guards, shown with an argument a step never changes)."""
    torch._dynamo.reset()

    def scaled(x: torch.Tensor, k: int) -> torch.Tensor:
        return x * k + 1

    compiled = torch.compile(scaled, backend="eager", dynamic=False)
    x = torch.ones(3)
    doubling, tripling = compilation.CompileClock(torch.device("cpu")), compilation.CompileClock(torch.device("cpu"))
    for _ in range(3):  # alternated: each later call still picks its own graph
        assert doubling.call(lambda: compiled(x, 2)).tolist() == [3.0] * 3
        assert tripling.call(lambda: compiled(x, 3)).tolist() == [4.0] * 3
    assert doubling.step_seconds is not None and tripling.step_seconds is not None
    # a first call checks everything: a new constant compiles a new graph
    assert compilation.CompileClock(torch.device("cpu")).call(lambda: compiled(x, 5)).tolist() == [6.0] * 3
    # a later call does not: the same clock with a changed constant would run a graph it has (none of the steps
    # does this; their inputs keep their shapes and their victim, and this is what the first call is for)
    once = compilation.CompileClock(torch.device("cpu"))
    fresh = torch.compile(lambda x, k: x * k - 1, backend="eager", dynamic=False)
    assert once.call(lambda: fresh(x, 2)).tolist() == [1.0] * 3
    assert once.call(lambda: fresh(x, 7)).tolist() == [1.0] * 3  # not 6: the guard on k was not checked
    torch._dynamo.reset()
