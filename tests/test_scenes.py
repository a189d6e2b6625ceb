"""The procedural ``Scenes`` dataset: determinism, disjoint splits, annotations, collation."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader

from captum_fgcam.datasets import Scenes


def test_deterministic_by_seed():
    a, b = Scenes(length=3), Scenes(length=3)
    for i in range(3):
        for x, y in zip(a[i], b[i], strict=True):
            assert torch.equal(x, y)
    assert not torch.equal(Scenes(length=1, seed=1)[0][0], a[0][0])


def test_train_and_test_do_not_overlap():
    train, test = Scenes("train", length=40), Scenes("test", length=40)
    seen = {train[i][0].numpy().tobytes() for i in range(40)}
    assert len(seen) == 40
    assert not seen & {test[i][0].numpy().tobytes() for i in range(40)}


HARD_HELD_OUT = {**Scenes.HARD, "style": "held-out"}


@pytest.mark.parametrize("options", [{"objects": 1}, {"objects": 2}, {"objects": 2, "wall": True},
                                     Scenes.HARD, HARD_HELD_OUT, {**HARD_HELD_OUT, "objects": 2}])
def test_box_is_tight_around_mask(options):
    scenes = Scenes(length=6, **options)
    size = scenes.size
    for i in range(len(scenes)):
        _, _, masks, boxes = scenes[i]
        for mask, (x0, y0, x1, y1) in zip(masks.reshape(-1, size, size), boxes.reshape(-1, 4),
                                          strict=True):
            assert mask.any()
            inside = torch.zeros_like(mask)
            inside[y0:y1, x0:x1] = True
            assert not (mask & ~inside).any()  # mask inside the box
            assert mask[y0].any() and mask[y1 - 1].any()  # box tight: every edge touches it
            assert mask[:, x0].any() and mask[:, x1 - 1].any()


def test_two_objects_have_different_classes_and_do_not_overlap():
    scenes = Scenes(objects=2, length=10)
    for i in range(len(scenes)):
        _, labels, masks, boxes = scenes[i]
        assert labels.shape == (2,) and masks.shape == (2, 96, 96) and boxes.shape == (2, 4)
        assert labels[0] != labels[1]
        assert not (masks[0] & masks[1]).any()


def test_wall_scenes_put_one_object_on_each_side():
    scenes = Scenes(objects=2, wall=True, length=10)
    row = scenes.wall_row
    for i in range(len(scenes)):
        _, labels, masks, _ = scenes[i]
        assert labels[0] != labels[1]
        assert not masks[0, row:].any() and masks[0, :row].any()
        assert not masks[1, :row].any() and masks[1, row:].any()


def test_normalisation_round_trip():
    raw, normalised = Scenes(length=2, normalize=False), Scenes(length=2)
    image = raw[1][0]
    assert 0 <= image.min() and image.max() <= 1
    torch.testing.assert_close(Scenes.denormalize(normalised[1][0]), image)
    torch.testing.assert_close(Scenes.normalise(image), normalised[1][0])


def test_default_collate_batches():
    image, label, mask, box = next(iter(DataLoader(Scenes(length=4), batch_size=4)))
    assert image.shape == (4, 3, 96, 96) and image.dtype == torch.float32
    assert label.shape == (4,) and label.dtype == torch.long
    assert mask.shape == (4, 96, 96) and mask.dtype == torch.bool
    assert box.shape == (4, 4) and box.dtype == torch.long
    image, label, mask, box = next(iter(DataLoader(Scenes(objects=2, length=2), batch_size=2)))
    assert label.shape == (2, 2) and mask.shape == (2, 2, 96, 96) and box.shape == (2, 2, 4)


def test_labels_cover_the_classes():
    scenes = Scenes(length=60)
    assert Scenes.classes == ("disc", "square", "triangle", "cross", "ring", "star")
    assert {int(scenes[i][1]) for i in range(60)} == set(range(6))


def test_the_training_generator_is_unchanged():
    """The zoo's checkpoints were trained on these scenes: the difficulty and style options
    must leave the default generator's images bit for bit as they were."""
    image, label, mask, box = Scenes("test", length=2)[1]
    assert image.double().sum().item() == pytest.approx(-4634.9181936126715, abs=1e-6)
    assert (int(label), int(mask.sum()), box.tolist()) == (2, 204, [53, 42, 73, 62])
    image, labels, mask, _ = Scenes("train", length=1, wall=True, objects=2)[0]
    assert image.double().sum().item() == pytest.approx(-17727.840717209514, abs=1e-6)
    assert labels.tolist() == [3, 2] and int(mask.sum()) == 780


def test_hard_scenes_have_small_objects_and_heavy_clutter():
    easy, hard = Scenes("test", length=40), Scenes("test", length=40, **Scenes.HARD)
    assert hard[0][0].shape == (3, 128, 128)
    lo, hi = Scenes.HARD["scale"]
    for i in range(40):
        x0, y0, x1, y1 = hard[i][3].tolist()
        assert max(x1 - x0, y1 - y0) <= 2 * hi * 128 + 2  # within the circumradius
    share = [float(s[i][2].float().mean()) for s in (easy, hard) for i in range(40)]
    assert sum(share[40:]) < 0.5 * sum(share[:40])  # objects cover far less of the image


def test_held_out_generator_differs_and_is_deterministic():
    a = Scenes("test", length=3, style="held-out", **Scenes.HARD)
    b = Scenes("test", length=3, style="held-out", **Scenes.HARD)
    training = Scenes("test", length=3, **Scenes.HARD)
    for i in range(3):
        assert torch.equal(a[i][0], b[i][0])
        assert not torch.equal(a[i][0], training[i][0])
    assert {int(Scenes(length=60, style="held-out")[i][1]) for i in range(60)} == set(range(6))


def test_invalid_arguments():
    with pytest.raises(ValueError, match="style"):
        Scenes(style="other")
    with pytest.raises(ValueError, match="scale"):
        Scenes(scale=(0.2, 0.1))
    with pytest.raises(ValueError, match="clutter"):
        Scenes(clutter=(3, 3))
    with pytest.raises(ValueError, match="split"):
        Scenes("val")
    with pytest.raises(ValueError, match="objects"):
        Scenes(objects=3)
    with pytest.raises(IndexError):
        Scenes(length=2)[2]
