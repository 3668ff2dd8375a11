"""A corpus of bad input: every case exits 2 with one line naming the key or file, before any work.

Each case runs ``fedinvert attack ...`` in-process. The runner's scenario builder and output preparation are
replaced by tripwires, so a case that slipped past the config check fails loudly instead of loading data;
afterwards the working folder holds nothing but the files the case wrote itself (no run folder, no
temporary sibling).
"""

import pytest

import fedinvert.runner
from fedinvert.cli import main


def _tripwire(*_args, **_kwargs):
    raise AssertionError("a bad configuration got past the schema check")


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(fedinvert.runner, "build_scenario", _tripwire)
    monkeypatch.setattr(fedinvert.runner, "_prepare_out", _tripwire)
    return tmp_path


def _refused(capsys, workdir, argv, needle, *, keep=()):
    """Run the CLI; assert exit 2, one 'error:' line holding ``needle``, and nothing new in ``workdir``."""
    code = main(argv)
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert code == 2, (argv[-3:], err)
    assert "Traceback" not in err
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ")
    assert needle in lines[0], lines[0]
    assert sorted(p.name for p in workdir.iterdir()) == sorted(keep)  # no run folder, no .NAME.tmp-* sibling
    return lines[0]


OBS = "__OBS__"  # replaced by an existing folder (the working folder) in the test

# (arguments after `fedinvert attack`, text the error line must hold: the key)
CASES = [
    # top-level scalars: type, range, strict booleans
    (["batch_size=abc"], "batch_size"),
    (["batch_size=[2]"], "batch_size"),
    (["batch_size=1.5"], "batch_size"),
    (["batch_size=0"], "batch_size"),
    (["batch_size=-3"], "batch_size"),
    (["batch_size=true"], "batch_size"),
    (["batch_size=20000"], "batch_size"),
    (["batch_size=.nan"], "batch_size"),
    (["image_size=100000"], "image_size"),
    (["image_size=4"], "image_size"),
    (["image_size=abc"], "image_size"),
    (["image_size=32.5"], "image_size"),
    (["channels=2"], "channels"),
    (["channels=rgb"], "channels"),
    (["channels=true"], "channels"),
    (["num_classes=1"], "num_classes"),
    (["num_classes=200000"], "num_classes"),
    (["num_classes=ten"], "num_classes"),
    (["seed=abc"], "seed"),
    (["seed=1.5"], "seed"),
    (["seed=4294967296"], "seed"),  # would alias seed 0 (seeds are 32-bit): refused
    (["seed=-1"], "seed"),
    (["seed=[0]"], "seed"),
    (["device=gpu7"], "device"),
    (["device=5"], "device"),
    (["overwrite=maybe"], "overwrite"),
    (['overwrite="false"'], "overwrite"),
    (["overwrite=1"], "overwrite"),
    (["progress=maybe"], "progress"),
    (["progress=0"], "progress"),
    (["observation=123"], "observation"),
    (["observation=/nonexistent/obs.safetensors"], "does not exist"),
    (["frobnicate=3"], "frobnicate"),
    (["preset=nope"], "preset"),
    (["notakeyvalue"], "key=value"),
    (["attack..lr=1"], "empty key"),
    # threat
    (["threat=5"], "threat"),
    (["threat.labels=maybe"], "threat.labels"),
    (["threat.batch_size=sometimes"], "threat.batch_size"),
    (["threat.local_hparams=1"], "threat.local_hparams"),
    (["threat.defenses=[known]"], "threat.defenses"),
    (["threat.colour=red"], "threat.colour"),
    # attack
    (["attack=[a,b]"], "attack"),
    (["attack=nope"], "unknown attack 'nope'"),
    (["attack=5"], "attack"),
    (["attack.bogus=1"], "attack.bogus"),
    (["attack.distance=[1,2]"], "attack.distance"),
    (["attack.distance=manhattan"], "attack.distance"),
    (["attack.lr=.nan"], "attack.lr"),
    (["attack.lr=.inf"], "attack.lr"),
    (["attack.lr=-0.1"], "attack.lr"),
    (["attack.lr=0"], "attack.lr"),
    (["attack.lr=fast"], "attack.lr"),
    (["attack.tv=-1"], "attack.tv"),
    (["attack.image_norm=-.inf"], "attack.image_norm"),
    (["attack.iterations=many"], "attack.iterations"),
    (["attack.iterations=0"], "attack.iterations"),
    (["attack.iterations=2.5"], "attack.iterations"),
    (["attack.restarts=true"], "attack.restarts"),
    (["attack.signed=maybe"], "attack.signed"),
    (["attack.schedule=linear"], "attack.schedule"),
    (["attack.labels=guess"], "attack.labels"),
    (["attack.compile=maybe"], "attack.compile"),
    (["attack.prune_ratio=1.5"], "attack.prune_ratio"),
    (["attack.fedavg=medium"], "attack.fedavg"),
    (["attack=dlg", "attack.line_search=armijo"], "attack.line_search"),
    (["attack=dlg", "attack.max_eval=0"], "attack.max_eval"),
    (["attack=gifd", "prior=face-dcgan", "attack.radii=[1,-2]"], "attack.radii[1]"),
    (["attack=gifd", "prior=face-dcgan", "attack.radii=3"], "attack.radii"),
    (["attack=gifd", "prior=face-dcgan", "attack.stages=[1.5]"], "attack.stages"),
    (["attack=gifd", "prior=face-dcgan", "attack.feature_lr=relativ"], "attack.feature_lr"),
    (["attack=gifd", "prior=face-dcgan", "attack.selection=best"], "attack.selection"),
    (["attack=ggl", "prior=face-dcgan", "attack.population=1"], "attack.population"),
    (["attack=ggl", "prior=face-dcgan", "attack.optimizer=sgd"], "attack.optimizer"),
    (["attack=gias", "prior=face-dcgan", "attack.finetune_steps=-1"], "attack.finetune_steps"),
    (["attack=gradinversion", "attack.bn=-0.5"], "attack.bn"),
    # model
    (["model=lenet-9"], "unknown model 'lenet-9'"),
    (["model=[convnet]"], "model"),
    (["model=convnet", "model.width=abc"], "model.width"),
    (["model=convnet", "model.width=0"], "model.width"),
    (["model=convnet", "model.width=-1"], "model.width"),
    (["model=convnet", "model.norm=layer"], "model.norm"),
    (["model=lenet5", "model.activation=tanh"], "model.activation"),
    (["model=resnet18", "model.blocks=[1,1]"], "model.blocks"),
    (["model.depth=3"], "model.depth"),
    # dataset
    (["dataset=imagenet"], "unknown dataset 'imagenet'"),
    (["dataset=5"], "dataset"),
    (["dataset.indices=[-1]"], "dataset.indices"),
    (["dataset.indices=abc"], "dataset.indices"),
    (["dataset.indices=[1.5]"], "dataset.indices"),
    (["dataset.split=train"], "dataset.split"),
    (["dataset.split=5"], "dataset.split"),
    (["dataset.split=2024-01-01"], "dataset.split"),
    (["dataset.unique_labels=maybe"], "dataset.unique_labels"),
    (["dataset.label_map=[100000000]"], "dataset.label_map"),
    (["dataset.label_map=oops"], "dataset.label_map"),
    (["dataset.colour=red"], "dataset.colour"),
    # prior
    (["prior=nope"], "unknown prior 'nope'"),
    (["prior=5"], "prior"),
    (["prior=fashion", "prior.weights=5"], "prior.weights"),
    (["prior=fashion", "prior.init_seed=-1"], "prior.init_seed"),
    (["prior=biggan", "prior.truncation=0"], "prior.truncation"),
    (["prior=face-dcgan", "prior.random_init=true"], "prior.random_init"),
    # protocol
    (["protocol=[1,2]"], "protocol"),
    (["protocol=fedprox"], "protocol"),
    (["protocol.mode=test"], "protocol.mode"),
    (["protocol=fedavg", "protocol.shuffle_seed=abc"], "protocol.shuffle_seed"),
    (["protocol=fedavg", "protocol.momentum=1"], "protocol.momentum"),
    (["protocol=fedavg", "protocol.local_epochs=0"], "protocol.local_epochs"),
    (["protocol=fedavg", "protocol.lr=.nan"], "protocol.lr"),
    (["protocol.local_epochs=2"], "protocol.local_epochs"),
    # defences
    (["defense.gaussian_noise=5"], "defense.gaussian_noise"),
    (["defense=[magic]"], "magic"),
    (["defense=5"], "defense"),
    (["defense.gaussian_noise.std=-1"], "defense.gaussian_noise.std"),
    (["defense.gaussian_noise.std=.nan"], "defense.gaussian_noise.std"),
    (["defense.gaussian_noise.sigma=1"], "defense.gaussian_noise.sigma"),
    (["defense.clipping.bound=0"], "defense.clipping.bound"),
    (["defense.clipping.per_layer=maybe"], "defense.clipping.per_layer"),
    (["defense.quantization.bits=1"], "defense.quantization.bits"),
    (["defense.quantization.bits=8.5"], "defense.quantization.bits"),
    (["defense.pruning.prune_ratio=1"], "defense.pruning.prune_ratio"),
    (["defense.secure_aggregation.clients=0"], "defense.secure_aggregation.clients"),
    (["defense.dp_sgd.delta=1"], "defense.dp_sgd.delta"),
    (["defense.soteria.layer=5"], "defense.soteria.layer"),
    # metrics and normalization
    (["metrics=5"], "metrics"),
    (["metrics.reference_draws=0"], "metrics.reference_draws"),
    (["metrics.reid_distractors=abc"], "metrics.reid_distractors"),
    (["metrics.st_lpips=maybe"], "metrics.st_lpips"),
    (["metrics.lpips_weights=/nonexistent/alex.pth"], "metrics.lpips_weights"),
    (["metrics.colour=1"], "metrics.colour"),
    (["normalization=5"], "normalization"),
    (["normalization=zscore"], "normalization"),
    (["normalization.mean=[0.5]"], "normalization.std"),
    (["normalization={mean: [0.5], std: [0]}"], "normalization.std"),
    (["normalization={mean: [.nan], std: [1]}"], "normalization.mean"),
    (["normalization={mean: [0.5, 0.5], std: [1, 1]}"], "normalization.mean"),
    (["channels=1", "normalization={mean: [0.1, 0.2, 0.3], std: [1, 1, 1]}"], "normalization.mean"),
    # a later value of another kind replaces the earlier one, and the checks name what is wrong with it
    (["normalization={mean: [0.5], std: [0.5]}", "normalization=[0.5]"], "normalization"),
    (["attack.iterations=[1]", "attack.iterations={a: 1}"], "attack.iterations"),
    # keys a saved observation has fixed
    ([f"observation={OBS}", "batch_size=4"], "batch_size"),
    ([f"observation={OBS}", "defense=clipping"], "defense.clipping"),
    ([f"observation={OBS}", "dataset=digits"], "dataset.name"),
    ([f"observation={OBS}", "protocol=fedavg"], "protocol.name"),
    ([f"observation={OBS}", "model=convnet"], "model.name"),
    ([f"observation={OBS}", "threat.batch_size=unknown"], "threat.batch_size"),
    # sizes of the raw input
    (["dataset.indices=[" + "1," * 40_000 + "1]"], "dataset.indices"),
    (["dataset.indices=[" + "1," * 20_000 + "1]"], "dataset.indices"),
]


@pytest.mark.parametrize(("args", "needle"), CASES, ids=[" ".join(a)[:60] for a, _ in CASES])
def test_bad_argument_is_one_line_and_exit_2(workdir, capsys, args, needle):
    args = [a.replace(OBS, str(workdir)) for a in args]
    _refused(capsys, workdir, ["attack", *args], needle)  # the default out= is runs/... in the working folder


def _alias_bomb() -> str:
    """Nine levels of ten aliases each: 10^9 values once expanded, a few hundred bytes as written."""
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 9)]
    return "\n".join(lines) + "\n"


# (name of the config file, its bytes, text the error line must hold); None: no file is written
FILES = [
    ("missing.yaml", None, "missing.yaml"),
    ("latin1.yaml", "attack:\n  name: café\n".encode("latin-1"), "not UTF-8"),
    ("tag.yaml", b"attack: !!python/object/apply:os.system ['echo hi']\n", "tag.yaml"),
    ("binary.yaml", b"out: !!binary aGVsbG8=\n", "binary.yaml"),
    ("huge.yaml", b"dataset:\n  indices: [" + b"1, " * 2_800_000 + b"1]\n", "huge.yaml"),  # 8 MB
    ("list.yaml", b"- a\n- b\n", "list.yaml"),
    ("broken.yaml", b"attack: [\n", "broken.yaml"),
    ("strings.yaml", b'overwrite: "false"\n', "overwrite"),
    ("bomb.yaml", _alias_bomb().encode(), "bomb.yaml"),
    ("deep.yaml", b"attack: " + b"[" * 100 + b"]" * 100 + b"\n", "deep.yaml"),
    ("colour.yaml", b"colour: red\n", "colour"),
    ("intkey.yaml", b"1: 2\n", "intkey.yaml"),
    ("half.yaml", b"batch_size: 1.5\n", "batch_size"),
    ("date.yaml", b"out: 2024-01-01\n", "out"),
    ("nested.yaml", b"attack:\n  name: idlg\n  lr: .inf\n", "attack.lr"),
    ("defense.yaml", b"defense:\n  gaussian_noise: 5\n", "defense.gaussian_noise"),
    ("threat.yaml", b"threat: 5\n", "threat"),
]


@pytest.mark.parametrize(("name", "content", "needle"), FILES, ids=[f[0] for f in FILES])
def test_bad_config_file_is_one_line_and_exit_2(workdir, capsys, name, content, needle):
    path = workdir / name
    if content is not None:
        path.write_bytes(content)
    keep = [name] if content is not None else []
    line = _refused(capsys, workdir, ["attack", "--config", str(path)], needle, keep=keep)
    assert len(line) < 400


def test_a_directory_named_like_a_config_file_is_refused(workdir, capsys):
    (workdir / "dir.yaml").mkdir()
    _refused(
        capsys, workdir, ["attack", "--config", str(workdir / "dir.yaml")], "dir.yaml", keep=["dir.yaml"]
    )


def test_the_corpus_covers_every_example_of_the_bad_input_report():
    flat = {" ".join(args) for args, _ in CASES}
    for example in (
        "batch_size=abc",
        "batch_size=[2]",
        "threat=5",
        "protocol=[1,2]",
        "attack=[a,b]",
        "attack.distance=[1,2]",
        "defense.gaussian_noise=5",
        "model=convnet model.width=abc",
        "observation=123",
        "prior=fashion prior.weights=5",
        "seed=abc",
        "attack.lr=.nan",
        "attack.lr=.inf",
        "batch_size=1.5",
        "seed=1.5",
        "seed=4294967296",
        "attack.tv=-1",
        "progress=maybe",
        "overwrite=maybe",
        "image_size=100000",
        "dataset.label_map=[100000000]",
        "protocol=fedavg protocol.shuffle_seed=abc",
    ):
        assert example in flat, example
    assert len(CASES) + len(FILES) >= 80
