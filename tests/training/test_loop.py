"""The fit loop on a handful of real photos (EfficientNet-Lite0, tiny crops)."""

from __future__ import annotations

import csv
import dataclasses
import json
import os

import numpy as np
import pytest
import torch

from landmark.config import ConfigError
from landmark.data import ImageRecord
from landmark.data.splits import split_by_photo
from landmark.models import load_checkpoint
from landmark.models.export import export_onnx
from landmark.training import load_train_config, train
from landmark.training.data import ClassBalancedSampler
from landmark.training.optim import lr_factor
from landmark.training.validation import batch_starts as _batch_starts

LANDMARKS = {47378: "Eiffel_Tower", 90396: "Stonehenge", 55350: "Sydney_Opera_House"}


@pytest.fixture(scope="module")
def tiny_folder(gldv2_root, tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    rows = list(csv.DictReader(open(gldv2_root / "train.csv")))
    for lab, _name in LANDMARKS.items():
        (root / str(lab)).mkdir()  # integer folder names are kept as landmark ids
        for i in [r["id"] for r in rows if int(r["landmark_id"]) == lab][:6]:
            os.symlink(gldv2_root / "train" / i[0] / i[1] / i[2] / f"{i}.jpg", root / str(lab) / f"{i}.jpg")
    return root


def tiny_cfg(*extra):
    return load_train_config(
        "cpu-mini",
        overrides=[
            "model.backbone=tf_efficientnet_lite0",
            "model.embedding_dim=16",
            "data.image_size=96",
            "eval_image_size=128",
            "data.num_workers=0",
            "cache_views=2",
            "freeze_stages=5",
            "optim.batch_size=8",
            "optim.lr=0.003",
            "optim.warmup_epochs=0",
            *extra,
        ],
    )


@pytest.mark.slow
def test_few_steps_reduce_the_loss_and_give_a_usable_model(tiny_folder, tmp_path):
    # from random layers, so that learning (not the pretrained initialisation) must lower the loss
    result = train(
        tiny_folder,
        tmp_path / "run",
        tiny_cfg("optim.epochs=6", "data.epoch_samples=64", "eval_every=3", "init=random"),
        progress=False,
    )
    assert result.history[0]["epoch"] == 0 and "loss" not in result.history[0]  # the untrained "before" row
    losses = [row["loss"] for row in result.history[1:]]  # each the mean of 8 batches
    assert np.mean(losses[-2:]) < 0.6 * np.mean(losses[:2])
    assert {"val_gap", "val_accuracy", "val_map@100"} <= set(result.history[-1])
    rows = list(csv.DictReader(open(tmp_path / "run" / "metrics.csv")))
    assert len(rows) == 7 and float(rows[-1]["loss"]) == pytest.approx(losses[-1], rel=1e-5)
    net, payload = load_checkpoint(result.model_path)
    assert net.dim == 16 and payload["classes"] == sorted(LANDMARKS)
    # the held-out photos are recorded (calibration validates on them): one per landmark of 6 photos
    assert len(payload["val_ids"]) == 3 and all((tiny_folder / i).is_symlink() for i in payload["val_ids"])
    # ONNX export of the trained model matches torch
    assert export_onnx(net, tmp_path / "m.onnx", height=96, width=128) < 1e-4


@pytest.mark.slow
def test_agem_trains_on_cached_crops_and_its_branch_is_saved(tiny_folder, tmp_path):
    result = train(
        tiny_folder,
        tmp_path / "agem",
        tiny_cfg("model.pooling=agem", "optim.epochs=2", "data.epoch_samples=16"),
        progress=False,
    )
    assert np.isfinite(result.history[-1]["loss"])
    net, payload = load_checkpoint(result.model_path)
    assert net.taps and payload["model_config"]["pooling"] == "agem"
    first = torch.load(result.model_path, weights_only=False)["state_dict"]
    assert any(k.startswith("attention.") for k in first)  # the trained branch is in the checkpoint
    with pytest.raises(ConfigError, match="freeze_stages"):  # a frozen (cached) stage cannot feed it
        train(tiny_folder, tmp_path / "frozen", tiny_cfg("model.pooling=agem", "freeze_stages=7"), progress=False)


@pytest.mark.slow
def test_a_vision_transformer_trains_from_random_weights(tiny_folder, tmp_path):
    cfg = load_train_config(
        "cpu-mini",
        overrides=[
            "model.backbone=timm/vit_tiny_patch16_224",
            "backbone_weights=random",
            "init=random",
            "model.embedding_dim=16",
            "data.image_size=64",
            "eval_image_size=64",
            "data.num_workers=0",
            "optim.batch_size=4",
            "optim.epochs=1",
            "data.epoch_samples=8",
            "optim.warmup_epochs=0",
            "freeze_stages=0",
            "cache_views=0",
        ],
    )
    result = train(tiny_folder, tmp_path / "vit", cfg, progress=False)
    assert np.isfinite(result.history[-1]["loss"])
    net, _ = load_checkpoint(result.model_path)
    assert net.backbone.name == "vit_tiny_patch16_224" and net.dim == 16
    frozen = dataclasses.replace(cfg, freeze_stages=2)
    with pytest.raises(ConfigError, match="cannot be split into stages"):
        train(tiny_folder, tmp_path / "frozen", frozen, progress=False)


@pytest.mark.slow
def test_resume_continues_with_identical_state(tiny_folder, tmp_path):
    cfg = tiny_cfg("optim.epochs=2")
    straight = train(tiny_folder, tmp_path / "a", cfg, progress=False)
    steps_per_epoch = straight.history[1]["step"]
    train(tiny_folder, tmp_path / "b", cfg, progress=False, max_steps=steps_per_epoch)  # "killed" after epoch 1
    with open(tmp_path / "b" / "metrics.csv", "a") as fh:  # ... as if after logging epoch 2, before its checkpoint
        fh.write("2,99,1.0,0.001,1.0,1.0,,,\n")
    resumed = train(tiny_folder, tmp_path / "b", cfg, progress=False, resume=True)
    logged = list(csv.DictReader(open(tmp_path / "b" / "metrics.csv")))
    assert [r["epoch"] for r in logged] == ["0", "1", "2"] and logged[-1]["step"] != "99"
    a = torch.load(straight.last_path, weights_only=False)["module"]
    b = torch.load(resumed.last_path, weights_only=False)["module"]
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [r["epoch"] for r in resumed.history] == [0, 1, 2]
    with pytest.raises(ValueError, match="another training configuration"):
        train(tiny_folder, tmp_path / "b", tiny_cfg("optim.epochs=3", "optim.lr=0.01"), progress=False, resume=True)
    # a last.pt written before a setting existed (here optim.ema) resumes: the setting reads as its default
    state = torch.load(resumed.last_path, weights_only=False)
    del state["train_config"]["optim"]["ema"]
    torch.save(state, resumed.last_path)
    assert train(tiny_folder, tmp_path / "b", cfg, progress=False, resume=True).history[-1]["epoch"] == 2


@pytest.mark.slow
def test_full_fine_tuning_path_without_cache(tiny_folder, tmp_path):
    cfg = tiny_cfg("cache_views=0", "freeze_stages=0", "optim.epochs=1", "head.kind=cosface", "data.image_size=64")
    result = train(tiny_folder, tmp_path / "c", cfg, progress=False)
    assert np.isfinite(result.history[-1]["loss"]) and result.model_path.is_file()


@pytest.mark.parametrize(
    "override,message",
    [
        ("head.kind=triplet", "head.kind: expected one of"),
        ("optim.optimizer=lion", "optim.optimizer: expected one of"),
        ("optim.schedule=linear", "optim.schedule"),
        ("data.sampler=uniform", "data.sampler"),
        ("init=imagenet", "init"),
        ("optim.epochs=0", "optim.epochs: expected at least 1"),
        ("data.val_fraction=1.0", "data.val_fraction"),
        ("optim.ema=1.5", "optim.ema"),
        ("freeze_stages=0", "cache_views needs freeze_stages"),
        ("model.backbone=resnet9000", "model.backbone: unknown backbone"),
        ("data.zoom_out=0.5", "data.zoom_out"),
        ("data.zoom_out_p=2", "data.zoom_out_p"),
        ("data.split=val", "data.split: expected one of"),
        ("data.split=test", "never the test queries"),
        ("data.split=index", "that split is unlabelled; give data.labels"),
    ],
)
def test_training_settings_no_loop_can_run_with_are_refused_by_key(override, message, tmp_path):
    from landmark.config import ConfigError

    with pytest.raises(ConfigError, match=message):
        load_train_config("cpu-mini", overrides=[override])
    cfg = load_train_config("cpu-mini")  # made in Python: train() checks it before reading a photo
    bad = dataclasses.replace(cfg, optim=dataclasses.replace(cfg.optim, epochs=0))
    with pytest.raises(ConfigError, match="optim.epochs"):
        train(tmp_path / "no-such-data", tmp_path / "run", bad, progress=False)
    assert not (tmp_path / "run").exists()


def test_one_landmark_is_refused_before_any_work(tiny_folder, tmp_path):
    from landmark.data import DatasetError

    one = tmp_path / "one"
    one.mkdir()
    (one / "47378").symlink_to(tiny_folder / "47378")
    with pytest.raises(DatasetError, match="at least 2 landmarks .* found 1"):
        train(one, tmp_path / "run", tiny_cfg(), progress=False)
    assert not (tmp_path / "run" / "cache").exists()


def test_split_by_photo_and_min_per_class():
    recs = [ImageRecord(f"{c}{i}", None, c) for c, n in ((1, 10), (2, 3), (3, 1)) for i in range(n)]
    split = split_by_photo(recs, 0.2, min_per_class=2, seed=0)
    assert split.classes == [1, 2]  # class 3 has one photo: dropped
    assert len(split.val) == 2 + 1  # 20% of 10, and at least one of 3
    assert not {r.id for r in split.val} & {r.id for r in split.train}
    assert split_by_photo(recs, 0.2, 2, seed=0).val == split.val  # deterministic


def test_balanced_sampler_is_uniform_over_classes():
    labels = [0] * 90 + [1] * 10
    s = ClassBalancedSampler(labels, num_samples=20000, power=0.0)
    drawn = np.array(labels)[list(iter(s))]
    assert abs(drawn.mean() - 0.5) < 0.02
    s.set_epoch(1)
    assert list(iter(s))[:50] != list(iter(ClassBalancedSampler(labels, num_samples=20000)))[:50]


def test_schedules():
    from landmark.training.config import OptimConfig

    cos = OptimConfig(lr=1.0, final_lr=0.01, schedule="cosine")
    assert lr_factor(0, 100, 10, cos) == pytest.approx(0.1)  # warm-up
    assert lr_factor(10, 100, 10, cos) == pytest.approx(1.0)
    assert lr_factor(100, 100, 10, cos) == pytest.approx(0.01)
    step = OptimConfig(schedule="step", step_milestones=(0.5,))
    assert lr_factor(80, 100, 0, step) == pytest.approx(0.1)


@pytest.mark.slow
def test_ddp_two_processes_on_cpu(tiny_folder, tmp_path):
    """``torchrun --nproc_per_node=2`` (gloo on CPU): both ranks train, rank 0 writes the model."""
    import socket
    import subprocess
    import sys

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    overrides = [
        "model.backbone=tf_efficientnet_lite0",
        "data.image_size=96",
        "eval_image_size=128",
        "data.num_workers=0",
        "cache_views=2",
        "freeze_stages=5",
        "optim.batch_size=8",
        "optim.epochs=1",
    ]
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=2",
        f"--master_port={port}",
        "-m",
        "landmark.cli",
        "train",
        str(tiny_folder),
        "--out",
        str(tmp_path / "ddp"),
        "--no-progress",
    ]
    for o in overrides:
        cmd += ["--set", o]
    proc = subprocess.run(
        cmd,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1", "MASTER_ADDR": "127.0.0.1"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("landmark train:") == 1  # only rank 0 reports
    net, payload = load_checkpoint(tmp_path / "ddp" / "model.pt")
    assert payload["epoch"] == 1 and np.isfinite(payload["metrics"]["loss"])


def test_cached_batches_never_end_with_a_single_photo():
    # BatchNorm in training mode cannot normalise one sample: a final batch of one is dropped
    assert _batch_starts(64, 32) == [0, 32] and _batch_starts(65, 32) == [0, 32]
    assert _batch_starts(66, 32) == [0, 32, 64] and _batch_starts(27, 32) == [0]


@pytest.mark.slow
def test_unreadable_training_photos_are_skipped_not_trained_as_black(tiny_folder, tmp_path):
    root = tmp_path / "photos"
    for lab in LANDMARKS:
        (root / str(lab)).mkdir(parents=True)
        for p in sorted((tiny_folder / str(lab)).iterdir()):
            os.symlink(os.readlink(p), root / str(lab) / p.name)
    (root / "47378" / "broken.jpg").write_bytes(b"not a jpeg")
    cfg = tiny_cfg("optim.epochs=1", "data.val_fraction=0", "optim.batch_size=5")
    result = train(root, tmp_path / "run", cfg, progress=False)
    meta = json.loads((tmp_path / "run" / "train_config.json").read_text())
    assert meta["train_photos"] == 3 * 6  # the 18 readable photos, not the broken one
    (cache,) = (tmp_path / "run" / "cache").glob("views-*.pt")
    assert torch.load(cache, weights_only=True)["failed"] == ["47378/broken.jpg"]
    assert np.isfinite(result.history[-1]["loss"])


@pytest.mark.slow
def test_gradient_accumulation_longer_than_an_epoch_still_updates(tiny_folder, tmp_path):
    # 15 training photos in batches of 8: 2 micro-batches per epoch, fewer than grad_accum = 4;
    # each epoch's partial accumulation steps at its end (it is neither lost nor carried over)
    cfg = tiny_cfg("optim.epochs=2", "optim.grad_accum=4", "eval_every=0")
    result = train(tiny_folder, tmp_path / "run", cfg, progress=False)
    assert [r["step"] for r in result.history] == [0, 1, 2]
    assert (
        "val_map@100" in result.history[-1] and "val_map@100" not in result.history[1]
    )  # eval_every=0: last epoch only


def test_ema_moves_every_parameter_once_per_update():
    # the trainable stages are shared by the backbone and TrainModule.suffix: each must move by (1 - decay)
    from landmark.models.net import build_model
    from landmark.training.module import TrainModule, make_head
    from landmark.training.optim import make_ema as _make_ema

    cfg = tiny_cfg("optim.ema=0.75")
    net = build_model(cfg.model)
    module = TrainModule(net, make_head(cfg, net.dim, [3, 3]), cfg)
    ema = _make_ema(module, cfg, None)
    ema.update_parameters(module)  # the first update copies
    before = {k: v.clone() for k, v in ema.module.state_dict().items()}
    with torch.no_grad():
        for p in module.parameters():
            p.add_(1.0)
        for b in module.buffers():
            if b.is_floating_point():
                b.add_(2.0)
    ema.update_parameters(module)
    after = ema.module.state_dict()
    params = {name for name, _ in ema.module.named_parameters(remove_duplicate=False)}
    assert any(k.startswith("suffix.") for k in params) and any(k.startswith("head.") for k in params)
    for k in params:
        assert torch.allclose(after[k], before[k] + 0.25, atol=1e-5), k
    buffers = [k for k, _ in module.named_buffers() if module.state_dict()[k].is_floating_point()]
    assert buffers and all(torch.equal(after[k], module.state_dict()[k]) for k in buffers)  # BatchNorm follows


@pytest.mark.slow
def test_ema_weights_are_validated_saved_and_resumed(tiny_folder, tmp_path):
    cfg = tiny_cfg("optim.epochs=2", "optim.ema=0.5", "data.epoch_samples=24")
    straight = train(tiny_folder, tmp_path / "a", cfg, progress=False)
    state = torch.load(straight.last_path, weights_only=False)
    raw = state["module"]
    trained = [k for k in raw if k.startswith("suffix.") and raw[k].is_floating_point()]

    def ema_of(s):
        return {k.removeprefix("module."): v for k, v in s["ema"].items()}

    assert trained and any(
        not torch.equal(raw[k], ema_of(state)[k]) for k in trained
    )  # an average, not the last weights
    # a run killed after its first epoch (its last.pt holds epoch 1's average), then resumed
    steps = straight.history[1]["step"]
    train(tiny_folder, tmp_path / "b", cfg, progress=False, max_steps=steps)
    first = torch.load(tmp_path / "b" / "last.pt", weights_only=False)
    resumed = train(tiny_folder, tmp_path / "b", cfg, progress=False, resume=True)
    again = torch.load(resumed.last_path, weights_only=False)["ema"]
    assert all(torch.equal(again[k], state["ema"][k]) for k in state["ema"])  # the same average
    # model.pt holds the average of the epoch that validated best, not the trained weights
    net, payload = load_checkpoint(straight.model_path)
    ema = ema_of(state if payload["epoch"] == 2 else first)
    saved = net.state_dict()
    assert all(torch.equal(saved[k], ema["net." + k].to(saved[k].dtype)) for k in saved)
    assert any(not torch.equal(saved[k], raw["net." + k]) for k in saved if saved[k].is_floating_point())
    with pytest.raises(ValueError, match="optim.ema"):
        tiny_cfg("optim.ema=1.5")


def test_zoom_out_shrinks_crops_onto_a_mean_colour_canvas():
    from PIL import Image

    from landmark.training.data import train_transform

    red = Image.new("RGB", (500, 400), (255, 0, 0))

    def shares(*overrides, seeds=range(8)):
        t = train_transform(
            load_train_config("cpu-mini", overrides=["data.color_jitter=0", *overrides]).data, [0.5] * 3, [0.5] * 3
        )
        out = []
        for s in seeds:
            torch.manual_seed(s)
            x = t(red)
            assert x.shape == (3, 288, 288)
            out.append(float((x[0].abs() < 0.02).float().mean()))  # mean colour: 0 once normalised
        return np.array(out)

    assert (shares() == 0).all()  # off by default: the photo fills the crop
    zoomed = shares("data.zoom_out=2", "data.zoom_out_p=1")
    assert (zoomed > 0).all() and (zoomed < 0.75 + 0.02).all()  # at most 2x smaller: >= 1/4 of the area is photo
    assert (shares("data.zoom_out=2", "data.zoom_out_p=0") == 0).all()
