"""What tools/analyze_features.py must write for the shapes data, in either
mmseg generation (tests/test_analysis.py, tests/mmseg1x/test_analysis_1x.py).
"""
import numpy as np
import pytest

JSON_KEYS = {
    'config', 'checkpoint', 'split', 'num_images', 'num_pixels',
    'feature_channels', 'max_pixels_per_class', 'classes', 'class_pixels',
    'compactness', 'separability', 'separability_ratio',
    'mean_distance_to_class_mean', 'mean_distance_between_class_means',
    'closest_classes', 'class_spread', 'pca_explained_variance', 'anchors',
    'png', 'npz'
}


def check_result(res, out_dir, channels):
    """``res``: the tool's json for 2 images of the shapes data, at most 50
    pixels per class, written to ``out_dir``; ``channels``: D."""
    assert set(res) == JSON_KEYS
    assert res['num_images'] == 2 and res['feature_channels'] == channels
    assert res['classes'] == ['background', 'square', 'disc', 'bar']
    assert sum(res['class_pixels']) == res['num_pixels'] > 0
    assert max(res['class_pixels']) <= 50
    assert res['compactness'] > 0 and res['separability'] > 0
    assert res['compactness'] == pytest.approx(
        res['mean_distance_to_class_mean']
        / res['mean_distance_between_class_means'], rel=1e-12)
    assert res['separability_ratio'] == pytest.approx(
        res['separability'] / res['mean_distance_to_class_mean'],
        rel=1e-12)
    assert len(res['class_spread']) == 4
    assert len(res['pca_explained_variance']) == 2
    assert set(res['closest_classes']) <= set(res['classes'])
    png = out_dir / 'features_pca.png'
    assert res['png'] == str(png)
    assert png.read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
    # The scatter's data, for pictures composed elsewhere: one point per
    # sampled pixel, with its class; the stars when they were marked.
    assert res['npz'] == str(out_dir / 'features_pca.npz')
    with np.load(res['npz']) as saved:
        assert saved['coords'].shape == (res['num_pixels'], 2)
        assert np.bincount(saved['labels'], minlength=4).tolist() == \
            res['class_pixels']
        assert saved['anchors'].shape == (
            (4, 2) if res['anchors']['marked'] else (0, 2))
        assert saved['explained'].tolist() == pytest.approx(
            res['pca_explained_variance'])
