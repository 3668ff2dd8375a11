"""How `resolve_config` layers the defaults, a base configuration, presets and overrides (deepmerge)."""

import copy

from fedinvert.config import resolve_config

IG = ["attack=inverting_gradients", "model=lenet-dlg", "dataset=synthetic"]


def test_mappings_merge_key_by_key_and_later_values_win() -> None:
    cfg = resolve_config([*IG, "attack.iterations=5", "attack.lr=0.5", "attack={name: inverting_gradients, lr: 0.05}"])
    assert cfg["attack"]["iterations"] == 5 and cfg["attack"]["lr"] == 0.05


def test_a_later_list_replaces_an_earlier_one() -> None:
    cfg = resolve_config([*IG, "batch_size=2", "dataset.indices=[0, 1]", "dataset.indices=[7, 3]"])
    assert cfg["dataset"]["indices"] == [7, 3]


def test_naming_another_class_drops_the_keys_set_for_the_previous_one() -> None:
    cfg = resolve_config([*IG, "attack.tv_weight=0.3", "attack=dlg", "attack.iterations=3"])
    assert cfg["attack"]["name"] == "dlg" and cfg["attack"]["iterations"] == 3 and "tv_weight" not in cfg["attack"]


def test_resolving_leaves_the_base_configuration_and_the_defaults_as_they_were() -> None:
    base = resolve_config([*IG, "defense=clipping", "defense.clipping.bound=1.0"])
    before = copy.deepcopy(base)
    changed = resolve_config(["attack.iterations=7", "defense.clipping.bound=2.0"], base=base)
    assert base == before and changed["attack"]["iterations"] == 7 and changed["defense"]["clipping"]["bound"] == 2.0
    assert resolve_config([*IG, "defense=clipping", "defense.clipping.bound=1.0"]) == before
