"""The write-up's findings as verdicts: each rule on hand-made evidence, both ways."""
import numpy as np

from ddpmlab import findings as F
from ddpmlab.metrics import confusion


def summary(loss, images=45000, steps=None):
    return {"final_loss": loss, "train_images": images, "steps": steps or images // 64}


def evaluation(fd, precision=0.7, cond_acc=None, hist=None, per_pred=None):
    r = {"fd": fd, "precision": precision, "pred_hist": hist or [100] * 10, "per_pred_class_fd": per_pred,
         "class_names": [f"c{k}" for k in range(10)], "classifier_test_acc": 0.93}
    if cond_acc is not None:
        r["cond_acc"] = cond_acc
        r["cond_acc_per_class"] = [cond_acc] * 10
    return r


def test_noise_conditioning_needs_lower_loss_and_clearly_lower_fd():
    s = {"resnet-basic": summary(0.09), "resnet-noise": summary(0.05)}
    assert F.noise_conditioning(s, {"resnet-basic": evaluation(9.0), "resnet-noise": evaluation(3.0)}).verdict \
        == F.REPRODUCED
    # fd within the noise of one evaluation: only the loss speaks for it
    assert F.noise_conditioning(s, {"resnet-basic": evaluation(3.2), "resnet-noise": evaluation(3.0)}).verdict \
        == F.PARTLY
    s_flat = {"resnet-basic": summary(0.05), "resnet-noise": summary(0.05)}
    assert F.noise_conditioning(s_flat, {"resnet-basic": evaluation(3.0), "resnet-noise": evaluation(3.0)}).verdict \
        == F.NOT_REPRODUCED
    assert F.noise_conditioning({}, {}).verdict == F.NOT_MEASURED


def test_spatial_encoding_counts_classes_and_precision():
    base = evaluation(3.0, 0.70, per_pred=[3.0] * 10)
    better = evaluation(2.0, 0.75, per_pred=[2.0] * 10)
    same = evaluation(3.05, 0.70, per_pred=[3.0] * 10)
    f = F.spatial_encoding({}, {"resnet-noise": base, "resnet-spatial": better})
    assert f.verdict == F.REPRODUCED and "better in 10 of 10" in f.evidence
    assert F.spatial_encoding({}, {"resnet-noise": base, "resnet-spatial": same}).verdict == F.NOT_REPRODUCED


def test_class_embedding_thresholds():
    for acc, verdict in ((0.7, F.REPRODUCED), (0.3, F.PARTLY), (0.12, F.NOT_REPRODUCED)):
        assert F.class_embedding({}, {"resnet-class": evaluation(3.0, cond_acc=acc)}).verdict == verdict


def test_two_classes_only_is_read_from_the_predicted_class_histogram():
    s = {"unet-input": summary(0.05, 120000), "unet-block": summary(0.04, 220000)}
    two = evaluation(9.0, cond_acc=0.2, hist=[450, 400] + [19] * 8)
    spread = evaluation(5.0, cond_acc=0.3, hist=[100] * 10)
    good = evaluation(2.0, cond_acc=0.85)
    metrics = {"unet-block": [{"kind": "epoch", "step": 1875, "adherence": 0.7},
                              {"kind": "epoch", "step": 3437, "adherence": 0.9}]}
    f = F.unet_input_two_classes(s, {"unet-input": two, "unet-block": good}, metrics)
    assert f.verdict == F.REPRODUCED and "c0, c1" in f.evidence and "85%" in f.evidence
    assert "adherence 0.70" in f.evidence            # unet-block at unet-input's 1875 steps, not its last epoch
    assert F.unet_input_two_classes(s, {"unet-input": spread, "unet-block": good}, metrics).verdict == F.PARTLY
    assert F.unet_input_two_classes(s, {"unet-input": good, "unet-block": good}, metrics).verdict == F.NOT_REPRODUCED


def test_cbn_improves_only_without_getting_worse_elsewhere():
    s = {"unet-cbn": summary(0.05, 120000)}
    ui = evaluation(5.0, cond_acc=0.4)
    assert F.cbn_improves(s, {"unet-input": ui, "unet-cbn": evaluation(5.0, cond_acc=0.6)}).verdict == F.REPRODUCED
    assert F.cbn_improves(s, {"unet-input": ui, "unet-cbn": evaluation(8.0, cond_acc=0.6)}).verdict == F.PARTLY
    assert F.cbn_improves(s, {"unet-input": ui, "unet-cbn": evaluation(5.1, cond_acc=0.41)}).verdict \
        == F.NOT_REPRODUCED


def epoch(e, diversity, sep=0.8, classes=10):
    return {"kind": "epoch", "epoch": e, "step": 100 * e, "diversity": diversity, "label_separation": sep,
            "adherence": 0.5, "classes_predicted": classes}    # the monitor writes the last two together


def test_a_collapse_counts_only_after_a_healthy_epoch():
    assert F.collapse_epochs([epoch(1, 0.1), epoch(2, 0.9), epoch(3, 0.1), epoch(4, 0.9, classes=2)]) == [3, 4]
    assert F.collapse_epochs([epoch(1, 0.1), epoch(2, 0.15)]) == []     # never healthy: untrained, not collapsed
    s = {"unet-cbn": summary(0.05, 120000)}
    healthy = {"unet-cbn": [epoch(e, 0.9) for e in range(1, 7)]}
    f = F.unet_collapse(s, healthy, {})
    assert f.verdict == F.NOT_MEASURED and "6 epochs" in f.caveat          # too short to say "not reproduced"
    study = {"collapse": {"runs": {"unet-cbn": {"epochs": 25, "images": 100000, "collapsed_at": None}}}}
    assert F.unet_collapse(s, healthy, study).verdict == F.NOT_REPRODUCED
    sick = {"unet-cbn": [epoch(1, 0.9), epoch(2, 0.05)]}
    f = F.unet_collapse(s, sick, {})
    assert f.verdict == F.REPRODUCED and "unet-cbn epoch 2" in f.evidence


def test_studies_decide_g_and_h_and_are_named_when_missing():
    assert "ddpmlab reproduce" in F.initialisation({}).evidence
    short = {"init": {"steps": 5, "seeds": [0], "variants": {"ddpmlab": {"loss_at": {"1": 1.0, "10": None}}}}}
    assert "1.000 at step 1" in F.initialisation(short).evidence and "step 10" not in F.initialisation(short).evidence
    at = lambda a, b, c: {"loss_at": {"1": a, "10": b, "100": c}}       # noqa: E731
    init = {"init": {"steps": 100, "seeds": [0, 1], "variants": {"ddpmlab": at(1.0, 0.3, 0.06),
                                                                  "pytorch-default": at(9.0, 0.6, 0.07)}}}
    assert F.initialisation(init).verdict == F.REPRODUCED
    init["init"]["variants"]["pytorch-default"] = at(1.0, 0.31, 0.06)
    assert F.initialisation(init).verdict == F.NOT_REPRODUCED
    bugs = {"good_bugs": {"images": 20000, "variants": {"ddpmlab": {"final_loss": 0.05, "fd": 4.0},
                                                        "residual-inplace": {"final_loss": 0.05, "fd": 6.0},
                                                        "pool-first": {"final_loss": 0.05, "fd": 4.1}}}}
    assert F.good_bugs(bugs).verdict == F.PARTLY
    bugs["good_bugs"]["variants"]["pool-first"]["final_loss"] = 0.06
    assert F.good_bugs(bugs).verdict == F.REPRODUCED
    # with the out-of-place control, the alias is judged against it: an inplace run as bad as its
    # control did not suffer from the alias, whatever the correct network scores
    bugs["good_bugs"]["variants"]["residual-copy"] = {"final_loss": 0.05, "fd": 6.0}
    assert F.good_bugs(bugs).verdict == F.PARTLY


def test_confusion_counts_requested_against_seen():
    labels = np.array([0, 0, 1, 2, 2, 2])
    preds = np.array([0, 1, 1, 0, 0, 2])
    m = confusion(labels, preds)
    assert m.shape == (10, 10) and m.sum() == 6
    assert m[0, 0] == 1 and m[0, 1] == 1 and m[1, 1] == 1 and m[2, 0] == 2 and m[2, 2] == 1


def test_with_several_training_seeds_the_measured_noise_decides():
    """(b) on one seed: fd 1.3x better clears the fixed 1.15x threshold. With three seeds whose fds
    scatter more than the means differ, the same gap is within the noise; with tight seeds it is
    a difference again, and a gap the other way is "worse"."""
    s = {p: {"final_loss": 0.1, "train_images": 1000} for p in ("resnet-noise", "resnet-spatial")}
    r = {"resnet-noise": {"fd": 13.0, "precision": 0.5}, "resnet-spatial": {"fd": 10.0, "precision": 0.5}}
    assert "better" in F.spatial_encoding(s, r).evidence and "--seeds" in F.spatial_encoding(s, r).caveat
    noisy = {"resnet-noise": {"fd": [13.0, 8.0, 16.0]}, "resnet-spatial": {"fd": [10.0, 15.0, 7.0]}}
    assert F.seed_verdict(noisy, "resnet-noise", "resnet-spatial", "fd", lower_is_better=True) == 0
    f = F.spatial_encoding(s, r, noisy)
    assert "within noise" in f.evidence and "over 3 training seeds" in f.evidence and f.caveat == ""
    tight = {"resnet-noise": {"fd": [13.0, 13.2, 12.9]}, "resnet-spatial": {"fd": [10.0, 10.1, 9.9]}}
    assert F.seed_verdict(tight, "resnet-noise", "resnet-spatial", "fd", lower_is_better=True) == 1
    assert F.seed_verdict(tight, "resnet-spatial", "resnet-noise", "fd", lower_is_better=True) == -1
    assert "better" in F.spatial_encoding(s, r, tight).evidence
    assert F.seed_verdict({"resnet-noise": {"fd": [13.0]}, "resnet-spatial": {"fd": [10.0, 9.0]}},
                          "resnet-noise", "resnet-spatial", "fd", lower_is_better=True) is None
