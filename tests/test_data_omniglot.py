"""deqbench.data.omniglot: the real loader on tiny generated folders, the digits stand-in, the task sampler. CPU."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from deqbench.data import DatasetNotFoundError
from deqbench.data.omniglot import (
    OMNIGLOT_DIR,
    ROTATIONS,
    FewShotSplits,
    TaskSampler,
    load_digits_meta,
    load_omniglot,
    omniglot_characters,
    stack_tasks,
)

pytestmark = pytest.mark.usefixtures("single_thread")

LAYOUT = {"images_background": ("Alpha",), "images_evaluation": ("Beta",)}  # 2 alphabets
CHARACTERS, DRAWERS = 3, 2


@pytest.fixture
def omniglot_root(tmp_path: Path) -> Path:
    """torchvision layout: omniglot-py/<subdir>/<alphabet>/characterNN/<id>_NN.png, 105 px, 1-bit, random blocks
    (no rotational symmetry), 2 alphabets x 3 characters x 2 drawers."""
    rng = np.random.default_rng(0)
    for sub, alphabets in LAYOUT.items():
        for alphabet in alphabets:
            for c in range(1, CHARACTERS + 1):
                folder = tmp_path / OMNIGLOT_DIR / sub / alphabet / f"character{c:02d}"
                folder.mkdir(parents=True)
                for d in range(1, DRAWERS + 1):
                    blocks = rng.random((7, 7)) > 0.5
                    pixels = np.kron(blocks, np.ones((15, 15), dtype=bool))
                    Image.fromarray(pixels.astype(np.uint8) * 255).convert("1").save(folder / f"{c:04d}_{d:02d}.png")
    return tmp_path


@pytest.fixture(scope="module")
def digits() -> FewShotSplits:
    return load_digits_meta()


# --------------------------------------------------------------------------- real loader on tiny files


def test_omniglot_split_follows_seeded_permutation_and_preprocessing(omniglot_root):
    splits = load_omniglot(omniglot_root, seed=3, n_meta_train=4, expect_characters=None)
    names = [name for name, _ in omniglot_characters(omniglot_root)]
    assert names[0] == "images_background/Alpha/character01" and names[-1] == "images_evaluation/Beta/character03"
    perm = np.random.default_rng(3).permutation(6)
    assert splits.permutation == tuple(int(i) for i in perm) and splits.seed == 3
    assert splits.meta_train.class_names == tuple(names[i] for i in perm[:4])
    assert splits.meta_test.class_names == tuple(names[i] for i in perm[4:])
    assert not set(splits.meta_train.class_names) & set(splits.meta_test.class_names)
    assert splits.meta_train.rotate_per_task and splits.meta_test.rotate_per_task
    assert splits.meta_train.stand_in_for is None and "permutation(6)" in splits.source
    for pool in (splits.meta_train, splits.meta_test):
        for x in pool.images:
            assert x.shape == (DRAWERS, 28, 28) and x.dtype == torch.float32
            assert float(x.min()) >= 0.0 and float(x.max()) <= 1.0 and float(x.std()) > 0.1
    # class images are the character's files, in sorted order, converted to L and LANCZOS-resized to 28 px
    first = sorted((omniglot_root / OMNIGLOT_DIR / splits.meta_train.class_names[0]).glob("*.png"))[1]
    with Image.open(first) as im:
        ref = np.asarray(im.convert("L").resize((28, 28), Image.Resampling.LANCZOS), dtype=np.float32) / 255.0
    torch.testing.assert_close(splits.meta_train.images[0][1], torch.from_numpy(ref))
    # same seed, same split; the full-size default split rule needs all 1623 characters
    again = load_omniglot(omniglot_root, seed=3, n_meta_train=4, expect_characters=None)
    assert again.meta_train.class_names == splits.meta_train.class_names
    with pytest.raises(ValueError, match="1623"):
        load_omniglot(omniglot_root, n_meta_train=4)
    with pytest.raises(ValueError, match="n_meta_train"):
        load_omniglot(omniglot_root, n_meta_train=6, expect_characters=None)


def test_omniglot_rotations_as_classes_are_distinct_and_split_by_character(omniglot_root):
    splits = load_omniglot(omniglot_root, seed=0, n_meta_train=4, expect_characters=None, rotations="as_classes")
    train, test = splits.meta_train, splits.meta_test
    assert (train.num_classes, test.num_classes) == (16, 8)
    assert not train.rotate_per_task
    characters = lambda pool: {name.rsplit("@", 1)[0] for name in pool.class_names}
    assert len(characters(train)) == 4 and len(characters(test)) == 2 and not characters(train) & characters(test)
    for pool in (train, test):
        for c in range(0, pool.num_classes, 4):
            base = pool.images[c]
            assert pool.class_names[c].endswith("@0")
            for k in range(1, 4):
                assert pool.class_names[c + k].endswith(f"@{ROTATIONS[k]}")
                torch.testing.assert_close(pool.images[c + k], torch.rot90(base, k, dims=(-2, -1)))
                assert not torch.allclose(pool.images[c + k], base)  # a rotation is a different class image


def test_omniglot_per_task_rotation_applies_to_support_and_query(omniglot_root):
    pool = load_omniglot(omniglot_root, seed=0, n_meta_train=4, expect_characters=None).meta_train
    sampler = TaskSampler(pool, n_way=3, k_shot=1, k_query=1, seed=5)
    seen: set[int] = set()
    for i in range(12):
        task = sampler.task(i)
        assert len(set(task.classes)) == 3
        for j, (c, angle) in enumerate(zip(task.classes, task.rotations)):
            k = ROTATIONS.index(angle)
            seen.add(angle)
            back_s = torch.rot90(task.support_images[j, 0], -k, dims=(-2, -1))
            back_q = torch.rot90(task.query_images[j, 0], -k, dims=(-2, -1))
            drawings = pool.images[c]
            hit_s = [d for d in range(DRAWERS) if torch.equal(drawings[d], back_s)]
            hit_q = [d for d in range(DRAWERS) if torch.equal(drawings[d], back_q)]
            assert len(hit_s) == 1 and len(hit_q) == 1 and hit_s != hit_q  # different drawings, same rotation
    assert len(seen) > 1


@pytest.mark.parametrize("present", [(), ("images_background",)])
def test_omniglot_missing_folder_error_names_the_path(tmp_path, present):
    for sub in present:
        (tmp_path / OMNIGLOT_DIR / sub).mkdir(parents=True)
    with pytest.raises(DatasetNotFoundError) as info:
        load_omniglot(tmp_path)
    message = str(info.value)
    expected = str(tmp_path / OMNIGLOT_DIR / "images_evaluation")
    assert expected in message and expected in info.value.missing
    assert (str(tmp_path / OMNIGLOT_DIR / "images_background") in message) == (not present)
    assert "load_digits_meta" in message and isinstance(info.value, FileNotFoundError)


# --------------------------------------------------------------------------- digits stand-in and the sampler


def test_digits_stand_in_has_40_classes_with_disjoint_digits(digits):
    train, test = digits.meta_train, digits.meta_test
    assert (train.num_classes, test.num_classes) == (24, 16) and train.num_classes + test.num_classes == 40
    digit = lambda name: int(name.split("@")[0].removeprefix("digit"))
    train_digits = {digit(n) for n in train.class_names}
    test_digits = {digit(n) for n in test.class_names}
    assert train_digits == set(range(6)) and test_digits == {6, 7, 8, 9}
    assert len(set(train.class_names) | set(test.class_names)) == 40
    assert digits.stand_in_for == train.stand_in_for == test.stand_in_for == "omniglot"
    assert "stand-in" in train.source and "not comparable" in digits.source
    assert not train.rotate_per_task
    for pool in (train, test):
        assert pool.image_shape == (28, 28)
        for c in range(0, pool.num_classes, 4):
            assert pool.images[c].shape[0] >= 170  # ~180 drawings of each digit
            assert pool.images[c].dtype == torch.float32
            assert float(pool.images[c].min()) >= 0.0 and float(pool.images[c].max()) <= 1.0
            assert float(pool.images[c][:, 0, 0].mean()) > 0.9  # inverted: background ~ 1 like Omniglot
            torch.testing.assert_close(pool.images[c + 1], torch.rot90(pool.images[c], 1, dims=(-2, -1)))
    with pytest.raises(ValueError, match="disjoint"):
        load_digits_meta(train_digits=(0, 1, 6), test_digits=(6, 7))


@pytest.mark.parametrize("n_way,k_shot,k_query", [(5, 1, 1), (5, 2, 3), (3, 1, 0)])
def test_task_sampler_shapes_labels_and_determinism(digits, n_way, k_shot, k_query):
    sampler = TaskSampler(digits.meta_test, n_way=n_way, k_shot=k_shot, k_query=k_query, seed=7)
    task = sampler.task(0)
    assert task.support_images.shape == (n_way * k_shot, 1, 28, 28)
    assert task.query_images.shape == (n_way * k_query, 1, 28, 28)
    assert torch.equal(task.support_labels, torch.arange(n_way).repeat_interleave(k_shot))
    assert torch.equal(task.query_labels, torch.arange(n_way).repeat_interleave(k_query))
    assert task.support_labels.dtype == torch.int64 and task.support_images.dtype == torch.float32
    assert len(set(task.classes)) == n_way and all(0 <= c < digits.meta_test.num_classes for c in task.classes)
    assert task.rotations == (0,) * n_way  # rotations are classes in the stand-in
    # support and query images of a class are distinct images of it, the ones recorded in task.drawings
    for j, c in enumerate(task.classes):
        picked = task.drawings[j]
        assert len(picked) == len(set(picked)) == k_shot + k_query
        images = digits.meta_test.images[c][list(picked)]
        assert torch.equal(task.support_images[j * k_shot:(j + 1) * k_shot, 0], images[:k_shot])
        assert torch.equal(task.query_images[j * k_query:(j + 1) * k_query, 0], images[k_shot:])
    # deterministic per (seed, index), whatever was sampled before; other seeds/indices differ
    fresh = TaskSampler(digits.meta_test, n_way=n_way, k_shot=k_shot, k_query=k_query, seed=7)
    fresh.task(3)
    again = fresh.task(0)
    assert again.classes == task.classes and torch.equal(again.support_images, task.support_images)
    assert torch.equal(again.query_images, task.query_images)
    other_seed = TaskSampler(digits.meta_test, n_way=n_way, k_shot=k_shot, k_query=k_query, seed=8).task(0)
    other_index = sampler.task(1)
    assert not torch.equal(other_seed.support_images, task.support_images)
    assert not torch.equal(other_index.support_images, task.support_images)


def test_stack_tasks_and_sampler_errors(digits):
    sampler = TaskSampler(digits.meta_train, n_way=5, k_shot=1, k_query=1, seed=0)
    (sx, sy), (qx, qy) = stack_tasks(sampler.tasks(0, 4))
    assert sx.shape == qx.shape == (4, 5, 1, 28, 28) and sy.shape == qy.shape == (4, 5)
    assert torch.equal(sx[2], sampler.task(2).support_images)
    with pytest.raises(ValueError, match="classes"):
        TaskSampler(digits.meta_test, n_way=17)
    with pytest.raises(ValueError, match="distinct images"):
        TaskSampler(digits.meta_test, n_way=5, k_shot=100, k_query=100)
