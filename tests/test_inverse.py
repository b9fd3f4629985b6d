"""deqbench.data.inverse: JIIO section 4.2 corruptions (inpainting window, denoising noise) and the inner cost. CPU."""

from __future__ import annotations

import pytest
import torch

from deqbench.data.inverse import PAPER_PROBLEMS, InverseProblem, corrupt, masked_sq_error


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _images(batch: int = 8, channels: int = 3, height: int = 64, width: int = 64) -> torch.Tensor:
    return torch.rand(batch, channels, height, width, generator=_gen(123)) * 2 - 1


def _square(mask_2d: torch.Tensor) -> tuple[int, int, int, int]:
    """(top, bottom, left, right) bounds, inclusive, of the zeros of one (H, W) mask."""
    rows = (mask_2d == 0).any(1).nonzero().flatten()
    cols = (mask_2d == 0).any(0).nonzero().flatten()
    return int(rows.min()), int(rows.max()), int(cols.min()), int(cols.max())


# --------------------------------------------------------------------------- inpainting


@pytest.mark.parametrize("window,height,width", [(20, 64, 64), (5, 16, 16), (5, 16, 24), (20, 21, 21), (7, 7, 9)])
def test_inpaint_mask_is_one_contiguous_square_inside(window, height, width):
    images = _images(32, 3, height, width)
    observed, mask = corrupt(InverseProblem("inpaint", window=window), images, _gen())
    assert mask.shape == (32, 1, height, width) and mask.dtype == images.dtype
    assert set(mask.unique().tolist()) <= {0.0, 1.0}
    for m in mask[:, 0]:
        assert int((m == 0).sum()) == window * window
        top, bottom, left, right = _square(m)
        assert bottom - top + 1 == window and right - left + 1 == window  # so the zeros fill the box exactly
        assert 0 <= top and bottom < height and 0 <= left and right < width
    torch.testing.assert_close(observed, images * mask, rtol=0, atol=0)


def test_inpaint_centre_range_matches_reference():
    """Centres uniform in [10, 54) per axis for window 20 at 64 px: tops span 0..43, row 63 is never masked."""
    _, mask = corrupt(InverseProblem("inpaint", window=20), torch.zeros(3000, 1, 64, 64), _gen(1))
    bounds = torch.tensor([_square(m) for m in mask[:, 0]])
    tops, lefts = bounds[:, 0], bounds[:, 2]
    assert tops.min() == 0 and tops.max() == 43 and lefts.min() == 0 and lefts.max() == 43
    assert len(tops.unique()) == 44 and len(lefts.unique()) == 44
    assert (mask[:, :, 63, :] == 1).all() and (mask[:, :, :, 63] == 1).all()
    assert not torch.equal(tops, lefts)  # the two axes are drawn independently
    # odd window 5 at 16 px: centres in [2, 14), i.e. tops 0..11 and the last row can be masked
    _, mask = corrupt(InverseProblem("inpaint", window=5), torch.zeros(2000, 1, 16, 16), _gen(2))
    tops = torch.tensor([_square(m)[0] for m in mask[:, 0]])
    assert tops.min() == 0 and tops.max() == 11


def test_inpaint_window_larger_than_image_is_clipped():
    _, mask = corrupt(InverseProblem("inpaint", window=20), torch.zeros(4, 1, 16, 16), _gen())
    assert (mask == 0).all()
    _, mask = corrupt(InverseProblem("inpaint", window=20), torch.zeros(4, 1, 16, 40), _gen())
    for m in mask[:, 0]:  # all rows, 20 contiguous columns
        top, bottom, left, right = _square(m)
        assert (top, bottom, right - left + 1, int((m == 0).sum())) == (0, 15, 20, 16 * 20)


def test_inpaint_centres_vary_and_are_reproducible():
    images = _images(16, 1, 32, 32)
    problem = InverseProblem("inpaint", window=8)
    _, first = corrupt(problem, images, _gen(7))
    _, again = corrupt(problem, images, _gen(7))
    _, other = corrupt(problem, images, _gen(8))
    assert torch.equal(first, again) and not torch.equal(first, other)
    assert len({_square(m) for m in first[:, 0]}) > 8  # different squares for different images
    generator = _gen(7)
    _, a = corrupt(problem, images, generator)
    _, b = corrupt(problem, images, generator)  # the generator advances
    assert not torch.equal(a, b)


# --------------------------------------------------------------------------- denoising and none


@pytest.mark.parametrize("sigma", [0.2, 0.4])
def test_denoise_noise_statistics(sigma):
    images = _images(32, 3, 32, 32)  # ~98k pixels
    observed, mask = corrupt(InverseProblem("denoise", sigma=sigma), images, _gen(3))
    noise = observed - images
    assert abs(noise.std().item() - sigma) < 0.01 * sigma and abs(noise.mean().item()) < 0.005
    # in [0, 1] pixel units the std is sigma / 2
    pixel_noise = (observed + 1) / 2 - (images + 1) / 2
    assert abs(pixel_noise.std().item() - sigma / 2) < 0.01 * sigma
    assert torch.equal(mask, torch.ones(32, 1, 32, 32))
    assert observed.max() > 1 and observed.min() < -1  # not clipped
    again, _ = corrupt(InverseProblem("denoise", sigma=sigma), images, _gen(3))
    assert torch.equal(observed, again)


@pytest.mark.parametrize("problem", [*PAPER_PROBLEMS, InverseProblem("inpaint", window=5), InverseProblem("none")],
                         ids=lambda p: p.name)
def test_inputs_are_not_modified(problem):
    images = _images(4, 3, 64, 64)
    view = images[:, :, 8:40, 8:40]  # the reference corrupted a view of the caller's batch in place
    before, view_before = images.clone(), view.clone()
    observed, mask = corrupt(problem, view, _gen())
    assert torch.equal(images, before) and torch.equal(view, view_before)
    assert observed.data_ptr() != view.data_ptr()
    observed.add_(1.0)  # the output is a new tensor, also for "none"
    assert torch.equal(images, before)


def test_none_is_a_copy():
    images = _images(2, 3, 8, 8)
    observed, mask = corrupt(InverseProblem("none"), images, _gen())
    assert torch.equal(observed, images) and torch.equal(mask, torch.ones(2, 1, 8, 8))


def test_corrupt_input_errors():
    with pytest.raises(ValueError, match="floating"):
        corrupt(InverseProblem("none"), torch.zeros(2, 1, 8, 8, dtype=torch.uint8), _gen())
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        corrupt(InverseProblem("none"), torch.zeros(1, 8, 8), _gen())
    with pytest.raises(TypeError, match="InverseProblem"):
        corrupt("inpaint20", torch.zeros(1, 1, 8, 8), _gen())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_corrupt_on_cuda_uses_the_cuda_generator():
    images = _images(4, 3, 16, 16).cuda()
    generator = torch.Generator(device="cuda").manual_seed(0)
    for problem in (InverseProblem("inpaint", window=5), InverseProblem("denoise", sigma=0.2)):
        observed, mask = corrupt(problem, images, generator)
        assert observed.device == images.device and mask.device == images.device
    with pytest.raises(ValueError, match="generator"):
        corrupt(InverseProblem("denoise", sigma=0.2), images, _gen())


# --------------------------------------------------------------------------- inner cost


def test_masked_sq_error_closed_form():
    prediction = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]], [[[0.0, 0.0], [0.0, 0.0]]]])  # (2, 1, 2, 2)
    observed = torch.tensor([[[[0.0, 0.0], [0.0, 1.0]]], [[[1.0, -1.0], [2.0, 0.5]]]])
    mask = torch.tensor([[[[1.0, 0.0], [1.0, 1.0]]], [[[1.0, 1.0], [1.0, 1.0]]]])
    # sample 0: 1^2 + (masked) + 3^2 + 3^2 = 19; sample 1: 1 + 1 + 4 + 0.25 = 6.25
    assert masked_sq_error(prediction, observed, mask).tolist() == [19.0, 6.25]
    # channels are summed too; a (B, 1, H, W) mask broadcasts over them
    three = masked_sq_error(prediction.expand(2, 3, 2, 2), observed.expand(2, 3, 2, 2), mask)
    assert three.tolist() == [57.0, 18.75]


def test_masked_sq_error_with_corrupt():
    images = _images(4, 3, 16, 16)
    observed, mask = corrupt(InverseProblem("inpaint", window=5), images, _gen())
    assert torch.equal(masked_sq_error(images, observed, mask), torch.zeros(4))  # the clean image fits exactly
    # a 0/1 mask makes the reference's "clean * mask" observation and the clean image equivalent
    prediction = _images(4, 3, 16, 16).flip(0)
    torch.testing.assert_close(masked_sq_error(prediction, observed, mask), masked_sq_error(prediction, images, mask))
    # the masked pixels are ignored entirely
    changed = torch.where(mask == 0, torch.full_like(prediction, 5.0), prediction)
    torch.testing.assert_close(masked_sq_error(changed, observed, mask), masked_sq_error(prediction, observed, mask))
    ones = torch.ones(4, 1, 16, 16)
    torch.testing.assert_close(masked_sq_error(prediction, images, ones), (prediction - images).square().sum((1, 2, 3)))


# --------------------------------------------------------------------------- names and validation


@pytest.mark.parametrize("name,expected", [
    ("inpaint20", InverseProblem("inpaint", window=20)),
    ("inpaint5", InverseProblem("inpaint", window=5)),
    ("denoise0.2", InverseProblem("denoise", sigma=0.2)),
    ("denoise0.4", InverseProblem("denoise", sigma=0.4)),
    ("denoise0.125", InverseProblem("denoise", sigma=0.125)),
    ("reconstruct", InverseProblem("none")),
])
def test_parse_name_round_trip(name, expected):
    problem = InverseProblem.parse(name)
    assert problem == expected and problem.name == name
    assert InverseProblem.parse(problem.name) == problem


def test_paper_problems():
    assert [p.name for p in PAPER_PROBLEMS] == ["inpaint20", "denoise0.2", "denoise0.4"]
    assert InverseProblem.parse("none") == InverseProblem("none")
    odd = InverseProblem("denoise", sigma=0.1234567)
    assert InverseProblem.parse(odd.name) == odd


@pytest.mark.parametrize("name", ["inpaint", "inpaint0", "inpaint-3", "denoise", "denoise-0.2", "denoise0",
                                  "denoise1..2", "denoisenan", "blur3", "Inpaint20", ""])
def test_parse_rejects(name):
    with pytest.raises(ValueError):
        InverseProblem.parse(name)


@pytest.mark.parametrize("kwargs,field", [
    ({"kind": "blur"}, "kind"),
    ({"kind": "inpaint", "window": 0}, "window"),
    ({"kind": "inpaint", "window": 2.5}, "window"),
    ({"kind": "inpaint", "window": True}, "window"),
    ({"kind": "denoise"}, "sigma"),
    ({"kind": "denoise", "sigma": -0.2}, "sigma"),
    ({"kind": "denoise", "sigma": float("inf")}, "sigma"),
    ({"kind": "inpaint", "sigma": 0.2}, "sigma"),
    ({"kind": "none", "sigma": 0.1}, "sigma"),
])
def test_validation_names_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        InverseProblem(**kwargs)
