"""The edge-preserving denoising of tissue curves (AIFSelectorLib.prepare.denoising) and the CSF exclusion it relies on."""
import numpy as np
import pytest
from scipy import ndimage

from AIFSelectorLib.ctp_series import CTPSeries, VolumeGeometry
from AIFSelectorLib.prepare.denoising import denoise, noise_sd_hu
from AIFSelectorLib.prepare.preprocessing import CSF_HU, brain_mask

DT_S, N_FRAMES = 1.0, 40
T = np.arange(N_FRAMES) * DT_S


def _bolus(arrival_s, peak_hu, rise_s=4.0):
    x = np.clip((T - arrival_s) / rise_s, 0, None)
    return peak_hu * x ** 3 * np.exp(3 * (1 - x))


def _two_regions(noise_hu, seed=0):
    """A 2 x 48 x 48 slab, 0.9 mm in-plane: left half 'grey matter' (35 HU, peak 30 HU at 8 s), right half
    'white matter' (27 HU, peak 12 HU at 10 s), both with Gaussian noise. Returns (series, baseline, mean, true
    enhancement (t, z, y, x), mask)."""
    shape = (2, 48, 48)
    left = np.zeros(shape, bool)
    left[:, :, :24] = True
    base = np.where(left, 35.0, 27.0).astype(np.float32)
    enh = np.where(left[None], _bolus(6.0, 30.0)[:, None, None, None], _bolus(8.0, 12.0)[:, None, None, None])
    rng = np.random.default_rng(seed)
    data = (base[None] + enh + noise_hu * rng.standard_normal((N_FRAMES,) + shape)).astype(np.float32)
    series = CTPSeries(data, T, VolumeGeometry((0.9, 0.9, 5.0)))
    return series, data[:5].mean(0), data.mean(0), enh.astype(np.float32), np.ones(shape, bool)


def _curves(denoised, mask):
    return denoised.curves(slice(0, mask.shape[0]), mask)


def test_noise_estimate_from_second_differences():
    series, baseline, mean, enh, mask = _two_regions(noise_hu=6.0)
    curves = (series.data - baseline[None])[:, mask].T
    assert noise_sd_hu(curves) == pytest.approx(6.0, rel=0.05)


def test_noise_free_curves_come_back_unchanged():
    series, baseline, mean, enh, mask = _two_regions(noise_hu=0.0)
    out = _curves(denoise(series, baseline, mean, mask, sigma_mm=3.0), mask)
    assert np.abs(out - (series.data - baseline[None])[:, mask].T).max() < 0.05


def test_noise_is_averaged_away_but_not_across_the_tissue_boundary():
    series, baseline, mean, enh, mask = _two_regions(noise_hu=5.0)
    d = denoise(series, baseline, mean, mask, sigma_mm=3.0)
    assert d.noise_hu == pytest.approx(5.0, rel=0.1)
    out = _curves(d, mask)
    truth = enh[:, mask].T
    raw = (series.data - baseline[None])[:, mask].T
    assert np.sqrt(np.mean((out - truth) ** 2)) < np.sqrt(np.mean((raw - truth) ** 2)) / 3
    # the columns next to the boundary keep their own peak: a Gaussian of the same scale mixes them
    cols = np.zeros(mask.shape, bool)
    cols[:, :, 22:26] = True
    peak_err = np.abs(out[cols[mask]].max(axis=1) - truth[cols[mask]].max(axis=1))
    gauss = ndimage.gaussian_filter(series.data - baseline[None], (0, 0, 3.0 / 0.9, 3.0 / 0.9))[:, cols].T
    gauss_err = np.abs(gauss.max(axis=1) - truth[cols[mask]].max(axis=1))
    assert np.median(peak_err) < 2.0 < np.median(gauss_err)


def test_flat_curves_pass_unchanged():
    """No enhancement and no noise anywhere: nothing to measure the noise on, nothing changes."""
    series, baseline, mean, enh, mask = _two_regions(noise_hu=0.0)
    series.data[:] = baseline[None]
    out = _curves(denoise(series, baseline, mean, mask, sigma_mm=3.0), mask)
    assert np.all(np.isfinite(out)) and np.abs(out).max() < 1e-3


def test_curves_of_voxels_that_were_not_denoised_are_refused():
    series, baseline, mean, enh, mask = _two_regions(noise_hu=5.0)
    part = mask.copy()
    part[:, :4] = False
    d = denoise(series, baseline, mean, part, sigma_mm=2.0)
    assert _curves(d, part).shape == (int(part.sum()), N_FRAMES)
    with pytest.raises(ValueError, match="not denoised"):
        _curves(d, mask)


def test_thin_csf_lines_leave_the_parenchyma():
    """A sulcus one voxel wide (8 HU) in grey matter (38 HU): a blurred baseline would keep it as tissue; the
    temporal mean (no blur) does not."""
    shape = (2, 64, 64)
    yy, xx = np.mgrid[:64, :64]
    head = (yy - 32) ** 2 + (xx - 32) ** 2 < 28 ** 2
    skull = head & ((yy - 32) ** 2 + (xx - 32) ** 2 >= 25 ** 2)
    img = np.where(head, 38.0, -1000.0)
    img[skull] = 1000.0
    sulcus = head & ~skull & (xx == 32)
    img[sulcus] = 8.0
    vol = np.repeat(img[None], shape[0], axis=0).astype(np.float32)
    _, parenchyma = brain_mask(vol, vol, (0.9, 0.9, 5.0))
    assert not parenchyma[:, sulcus].any()
    assert parenchyma[:, head & ~skull & (np.abs(xx - 32) > 4) & ((yy - 32) ** 2 + (xx - 32) ** 2 < 20 ** 2)].all()
    assert ndimage.gaussian_filter(vol, (0, 1, 1))[:, sulcus].min() > CSF_HU


def test_fine_matrix_is_filtered_on_blocks_of_the_filter_grid():
    """A 0.45 mm series (a 512 matrix) is filtered on 2 x 2 blocks (FILTER_GRID_MM): noise-free, every voxel gets
    the curve the 0.9 mm series it was upsampled from gets; with noise, the noise is averaged away and the
    tissue boundary kept, as at 0.9 mm."""
    import dataclasses
    from AIFSelectorLib.prepare.denoising import FILTER_GRID_MM
    from AIFSelectorLib.prepare.preprocessing import block_factors
    coarse, c_base, c_mean, enh, c_mask = _two_regions(noise_hu=0.0)
    up = lambda a: a.repeat(2, axis=-2).repeat(2, axis=-1)
    fine_geometry = dataclasses.replace(coarse.geometry, spacing_mm=(0.45, 0.45, 5.0))
    fine = dataclasses.replace(coarse, data=up(coarse.data), geometry=fine_geometry)
    assert block_factors(fine_geometry.spacing_mm, FILTER_GRID_MM) == (2, 2)
    assert block_factors(coarse.geometry.spacing_mm, FILTER_GRID_MM) == (1, 1)
    mask = up(c_mask)
    want = up(_curves(denoise(coarse, c_base, c_mean, c_mask, sigma_mm=3.0), c_mask).T.reshape((N_FRAMES,) + c_mask.shape))
    got = _curves(denoise(fine, up(c_base), up(c_mean), mask, sigma_mm=3.0), mask)
    assert np.abs(got - want[:, mask].T).max() < 0.05
    rng = np.random.default_rng(1)
    noisy = dataclasses.replace(fine, data=(fine.data + 10.0 * rng.standard_normal(fine.data.shape)).astype(np.float32))
    base, mean = noisy.data[:5].mean(0), noisy.data.mean(0)
    out = _curves(denoise(noisy, base, mean, mask, sigma_mm=3.0), mask)
    truth = up(enh)[:, mask].T
    raw = (noisy.data - base[None])[:, mask].T
    assert np.sqrt(np.mean((out - truth) ** 2)) < np.sqrt(np.mean((raw - truth) ** 2)) / 3
    cols = np.zeros(mask.shape, bool)
    cols[:, :, 44:52] = True  # the four 0.9 mm columns beside the boundary
    assert np.median(np.abs(out[cols[mask]].max(axis=1) - truth[cols[mask]].max(axis=1))) < 2.0
