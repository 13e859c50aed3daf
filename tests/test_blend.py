"""Blend weights: positive, full at the image border, tapering inside."""

import numpy as np
import pytest

from segtile.tiling.blend import BLENDS, BlendError, profile, tile_weight


@pytest.mark.parametrize("blend", BLENDS)
@pytest.mark.parametrize("size, overlap", [(1, 0), (7, 3), (64, 16), (512, 64)])
def test_profiles_are_positive_with_peak_one(blend, size, overlap):
    weights = profile(blend, size, overlap)
    assert weights.shape == (size,)
    assert (weights > 0).all()
    assert weights.max() == pytest.approx(1.0)
    np.testing.assert_allclose(weights, weights[::-1], rtol=1e-12)


@pytest.mark.parametrize("blend", ["gaussian", "cosine", "linear"])
def test_interior_tiles_taper_towards_their_edges(blend):
    weight = tile_weight(blend, 64, 16, (False, False, False, False))
    assert weight[0, 0] < weight[32, 32]
    assert weight[32, 0] < weight[32, 20] <= weight[32, 32]


@pytest.mark.parametrize("blend", BLENDS)
def test_weight_is_full_along_sides_on_the_image_border(blend):
    weight = tile_weight(blend, 64, 16, (True, False, True, False))
    # Top-left corner tile: full weight from the border to the centre along both axes.
    assert (weight[:32, :32] == 1.0).all()
    whole = tile_weight(blend, 64, 16, (True, True, True, True))
    assert (whole == 1.0).all()


def test_linear_ramps_only_across_the_overlap():
    weights = profile("linear", 64, 16)
    assert (weights[16:48] == 1.0).all()
    assert weights[0] == pytest.approx(0.5 / 16)


def test_weights_are_read_only():
    weight = tile_weight("gaussian", 16, 4, (False,) * 4)
    with pytest.raises(ValueError):
        weight[0, 0] = 2


def test_unknown_blend_is_refused():
    with pytest.raises(BlendError, match="unknown blend 'hamming'"):
        profile("hamming", 8, 2)
