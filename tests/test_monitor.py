"""Collapse made visible: the snapshot scores, and the trainer's warning when a model ignores its label."""
import json
import logging

import pytest
import torch

from ddpmlab import monitor
from ddpmlab.data import to_model_range
from ddpmlab.recipes import make_run_config
from ddpmlab.train import Trainer

UNET = {"channels": 8, "channel_mults": (1, 2), "blocks_per_level": 1, "time_dim": 16}


@pytest.fixture(autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)   # tiny convolutions on a shared 2-core CPU
    yield
    torch.set_num_threads(n)


def snapshot_layout(images, labels, per_class, skip=0):
    """Real images laid out like a snapshot: per_class of class 0, then of class 1, ..."""
    idx = torch.cat([torch.nonzero(labels == k).flatten()[skip:skip + per_class] for k in range(10)])
    return to_model_range(images[idx]), labels[idx]


def test_pairwise_distance_by_hand():
    x = torch.tensor([[0.0, 0.0], [3.0, 4.0], [0.0, 0.0]])
    assert monitor.mean_pairwise_distance(x) == pytest.approx((5 + 0 + 5) / 3)
    assert monitor.mean_pairwise_distance(x[:1]) == 0.0


def test_real_images_score_about_one_and_raise_nothing(fmnist_small):
    images, labels = fmnist_small.images, fmnist_small.labels
    classes = torch.arange(10).repeat_interleave(8)
    ref = monitor.reference(to_model_range(images), labels, classes, 8)
    other, y = snapshot_layout(images, labels, 8, skip=8)     # different real images of the same classes
    assert torch.equal(y, classes)
    scores = monitor.snapshot_scores(other, y, ref)
    assert 0.7 < scores["diversity"] < 1.4 and 0.6 < scores["label_separation"] < 1.6
    assert monitor.collapse_symptoms(scores, 10) == []


def test_collapse_and_ignored_labels_are_named(fmnist_small):
    images, labels = fmnist_small.images, fmnist_small.labels
    classes = torch.arange(10).repeat_interleave(8)
    ref = monitor.reference(to_model_range(images), labels, classes, 8)
    real, _ = snapshot_layout(images, labels, 8, skip=8)
    # every label yields the same 8 images (a model that ignores its label, same seeds per class)
    same_for_all = real[:8].repeat(10, 1, 1, 1)
    s = monitor.snapshot_scores(same_for_all, classes, ref)
    assert s["label_separation"] == 0 and s["diversity"] > 0.5
    assert any("label is ignored" in m for m in monitor.collapse_symptoms(s))
    # the same blob for every sample and every label
    blob = real[:1].repeat(80, 1, 1, 1) + 0.01 * torch.randn(80, *real.shape[1:])
    symptoms = monitor.collapse_symptoms(monitor.snapshot_scores(blob, classes, ref))
    assert any("collapsed" in m for m in symptoms) and any("label is ignored" in m for m in symptoms)
    # a classifier that only ever sees sweaters
    only_pullovers = lambda x: torch.nn.functional.one_hot(torch.full((x.shape[0],), 2), 10).float()
    s = monitor.snapshot_scores(real, classes, ref, only_pullovers)
    assert s["adherence"] == pytest.approx(0.1) and s["classes_predicted"] == 1
    assert any("only 1 of 10 classes" in m for m in monitor.collapse_symptoms(s, 10))


def test_trainer_warns_when_the_model_ignores_its_label(tmp_path, fmnist_small, caplog):
    rc = make_run_config("unet-input", UNET, batch_size=32, snapshot_steps=2, snapshot_per_class=4,
                         log_every=1, device="cpu", epochs=1)
    trainer = Trainer(tmp_path / "run", rc, data=fmnist_small.subset(64), progress=False)
    # force the label to be ignored: every class (and the null label) has the same embedding, frozen
    for m in (trainer.model, trainer.ema.model):
        m.class_embed.weight.data.copy_(m.class_embed.weight.data[:1].expand_as(m.class_embed.weight))
        m.class_embed.weight.requires_grad_(False)
    with caplog.at_level(logging.WARNING, logger="ddpmlab.train"):
        trainer.fit()
    assert "epoch 1: the label is ignored" in caplog.text
    epoch = [m for m in map(json.loads, (tmp_path / "run" / "metrics.jsonl").read_text().splitlines())
             if m["kind"] == "epoch"][0]
    assert epoch["label_separation"] == 0 and "diversity" in epoch
