"""Pixel conversion, video crops and flips, SpecAugment and mixup."""

from __future__ import annotations

import pytest
import torch

from mbt.data.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    VideoTransform,
    mixup,
    normalize_video,
    random_resized_crop_box,
    spec_augment,
)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_uint8_to_float_does_not_overflow():
    """Pixels become floats before any arithmetic: white is +1, black -1 (uint8 math wraps)."""
    frames = torch.zeros(2, 4, 6, 3, dtype=torch.uint8)
    frames[0] = 255  # white
    exact = dict(train=False, resize_short=4)  # a 4x4 centre crop of 4x6 frames: no resampling
    pixels = VideoTransform(4, **exact)(frames)
    assert pixels.shape == (2, 3, 4, 4) and pixels.dtype == torch.uint8  # the item contract
    x = normalize_video(pixels)
    assert x.shape == (2, 3, 4, 4) and x.dtype == torch.float32
    assert torch.equal(x[0], torch.ones(3, 4, 4))  # white -> +1, not wrapped around
    assert torch.equal(x[1], -torch.ones(3, 4, 4))  # black -> -1
    imagenet = normalize_video(pixels, "imagenet")
    expected = (1 - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD)
    assert torch.allclose(imagenet[0, :, 0, 0], expected)
    with pytest.raises(ValueError, match="uint8"):
        VideoTransform(4, **exact)(frames.float())
    with pytest.raises(ValueError, match="already normalised"):
        normalize_video(x)


def test_white_stays_white_through_the_transforms():
    white = torch.full((3, 40, 60, 3), 255, dtype=torch.uint8)
    for train in (True, False):
        out = normalize_video(VideoTransform(32, train=train)(white, generator=gen(0)))
        assert torch.allclose(out, torch.ones_like(out), atol=1e-5)


def _float_reference(frames: torch.Tensor, box: tuple[int, int, int, int], size: int):
    """The crop + antialiased bilinear resize done in float32 on [0, 1] pixels."""
    top, left, h, w = box
    x = frames.permute(0, 3, 1, 2).float()[..., top : top + h, left : left + w] / 255
    return torch.nn.functional.interpolate(
        x, size=(size, size), mode="bilinear", align_corners=False, antialias=True
    )


def test_uint8_transform_is_within_one_level_of_float():
    """The uint8 crop/resize (the item contract) differs from the float one by <= 1/255."""
    frames = torch.randint(0, 256, (4, 48, 64, 3), dtype=torch.uint8)
    tf = VideoTransform(32, train=True, hflip=False)
    for seed in range(5):
        box = random_resized_crop_box(48, 64, tf.crop_scale, generator=gen(seed))
        out = tf(frames, generator=gen(seed)).float() / 255  # (T, 3, S, S)
        ref = _float_reference(frames, box, 32)
        assert (out - ref).abs().max() <= 1 / 255 + 1e-4
    # upscaling (a 240-line source is stored as it is, and resized to 256 at evaluation)
    up = VideoTransform(48, train=False, resize_short=56)(frames).float() / 255  # (T, 3, 48, 48)
    ref = torch.nn.functional.interpolate(
        frames.permute(0, 3, 1, 2).float() / 255, size=(56, 75), mode="bilinear", antialias=True
    )[..., 4:52, 13:61]
    assert (up - ref).abs().max() <= 1 / 255 + 1e-4


def test_train_transform_shapes_and_determinism():
    frames = torch.randint(0, 256, (4, 48, 64, 3), dtype=torch.uint8)
    tf = VideoTransform(32, train=True)
    a = tf(frames, generator=gen(0))
    assert a.shape == (4, 3, 32, 32) and a.dtype == torch.uint8
    assert a.is_contiguous()
    assert torch.equal(a, tf(frames, generator=gen(0)))
    assert not torch.equal(a, tf(frames, generator=gen(1)))


def test_train_crop_is_shared_by_all_frames():
    frame = torch.randint(0, 256, (1, 48, 64, 3), dtype=torch.uint8)
    out = VideoTransform(32, train=True)(frame.expand(5, -1, -1, -1), generator=gen(3))
    assert all(torch.equal(out[0], out[t]) for t in range(5))


def test_random_resized_crop_box_bounds():
    g = gen(0)
    for _ in range(200):
        top, left, h, w = random_resized_crop_box(48, 64, (0.08, 1.0), generator=g)
        assert 0 <= top and top + h <= 48 and 0 <= left and left + w <= 64
        assert 0.08 * 48 * 64 * 0.9 <= h * w <= 48 * 64
        assert 3 / 4 * 0.9 <= w / h <= 4 / 3 * 1.1


def test_eval_transform_is_a_deterministic_centre_crop():
    frames = torch.randint(0, 256, (2, 36, 48, 3), dtype=torch.uint8)
    tf = VideoTransform(24, train=False, resize_short=24)  # no resize on the short side
    a = tf(frames, generator=gen(0))
    assert torch.equal(a, tf(frames, generator=gen(1)))
    assert a.shape == (2, 3, 24, 24)
    resized = torch.nn.functional.interpolate(
        frames.permute(0, 3, 1, 2).float() / 255, size=(24, 32), mode="bilinear", antialias=True
    )
    # uint8 resampling: within one level of the float resize (was atol 1e-6 on floats)
    assert torch.allclose(a.float() / 255, resized[..., :, 4:28], atol=1 / 255 + 1e-4)
    assert VideoTransform(224, train=False).resize_short == 256


def test_three_crops_along_the_long_side():
    frames = torch.zeros(2, 32, 96, 3, dtype=torch.uint8)
    frames[:, :, :32] = 255  # white left third
    tf = VideoTransform(32, train=False, resize_short=32, crops=3)
    out = normalize_video(tf(frames))
    assert out.shape == (3, 2, 3, 32, 32)
    assert torch.allclose(out[0], torch.ones(2, 3, 32, 32))  # left crop: all white
    assert torch.allclose(out[2], -torch.ones(2, 3, 32, 32))  # right crop: all black
    centre = VideoTransform(32, train=False, resize_short=32)(frames)
    assert torch.equal(out[1], normalize_video(centre))
    with pytest.raises(ValueError, match="crops"):
        VideoTransform(32, train=True, crops=3)


def test_spec_augment_masks_the_requested_widths():
    fbank = torch.randn(100, 64) + 5.0  # no natural zeros
    widths_f, widths_t = set(), set()
    for seed in range(200):
        out = spec_augment(
            fbank, freq_masks=1, freq_width=10, time_masks=1, time_width=20, generator=gen(seed)
        )
        zero = out == 0
        freq_cols = zero.all(dim=0)  # mel bins masked at every frame
        time_rows = zero.all(dim=1)
        # everything zeroed is a whole band, and each band is one contiguous run
        assert torch.equal(zero, freq_cols[None, :] | time_rows[:, None])
        for band, width, seen in ((freq_cols, 10, widths_f), (time_rows, 20, widths_t)):
            idx = band.nonzero().flatten()
            assert len(idx) <= width
            if len(idx):
                assert idx[-1] - idx[0] + 1 == len(idx)
            seen.add(len(idx))
    assert max(widths_f) == 10 and min(widths_f) == 0 and max(widths_t) >= 18
    assert (fbank != 0).all()  # input untouched
    same = spec_augment(
        fbank, freq_masks=2, freq_width=8, time_masks=4, time_width=5, generator=gen(7)
    )
    assert torch.equal(
        same,
        spec_augment(
            fbank, freq_masks=2, freq_width=8, time_masks=4, time_width=5, generator=gen(7)
        ),
    )


def test_mixup_shares_lambda_and_permutation():
    b = 8
    ids = torch.arange(b, dtype=torch.float32)
    video = ids.view(b, 1, 1, 1, 1).expand(b, 2, 3, 4, 4).clone()  # value = clip id
    audio = ids.view(b, 1, 1).expand(b, 10, 6).clone()
    targets = torch.eye(b)
    v, a, t, lam = mixup(video, audio, targets, alpha=0.5, generator=gen(0))
    assert 0.0 < lam < 1.0
    # recover the partner of each clip from each modality: x = lam * i + (1 - lam) * perm[i]
    partner_v = ((v[:, 0, 0, 0, 0] - lam * ids) / (1 - lam)).round().long()
    partner_a = ((a[:, 0, 0] - lam * ids) / (1 - lam)).round().long()
    assert torch.equal(partner_v, partner_a)
    assert sorted(partner_v.tolist()) == list(range(b))  # a permutation
    expected_t = lam * targets + (1 - lam) * targets[partner_v]
    assert torch.allclose(t, expected_t) and torch.allclose(t.sum(1), torch.ones(b))
    again = mixup(video, audio, targets, alpha=0.5, generator=gen(0))
    assert again[3] == lam and torch.equal(again[0], v)


def test_mixup_alpha_zero_is_identity():
    video, audio, targets = torch.randn(4, 3), torch.randn(4, 5), torch.eye(4)
    v, a, t, lam = mixup(video, audio, targets, alpha=0.0)
    assert lam == 1.0 and v is video and a is audio and t is targets


def test_mixup_with_one_modality():
    audio, targets = torch.randn(4, 10, 6), torch.eye(4)
    v, a, t, lam = mixup(None, audio, targets, alpha=1.0, generator=gen(0))
    _, a2, _, _ = mixup(torch.zeros(4, 1), audio, targets, alpha=1.0, generator=gen(0))
    assert v is None and torch.equal(a, a2) and t.shape == (4, 4)
