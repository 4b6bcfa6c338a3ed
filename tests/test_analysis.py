"""sar.evaluation.features (feature metrics, PCA, plot),
sar.mmseg0x.features (feature collection) and tools/analyze_features.py end
to end on a 2-iteration checkpoint."""
import json
import math
import os.path as osp

import numpy as np
import pytest
import torch
from mmcv.cnn.utils import revert_sync_batchnorm
from mmcv.utils import Config

from analysis_result import check_result
from conftest import DEMO_BASELINE, DEMO_SAR
from sar.evaluation.features import (anchor_source, feature_stats,
                                     inner_decode_head, labels_at_features,
                                     pca_2d, pca_project, plot_pca,
                                     semantic_anchors)
from sar.mmseg0x.features import collect_features
from test_tools import PY, run, write_config

IGNORE = 255


def reference_stats(feats, labels, num_classes, ignore_index):
    """The definitions, one pixel and one pair of classes at a time."""
    groups = {c: [f for f, y in zip(feats, labels) if int(y) == c]
              for c in range(num_classes)}
    means = {c: sum(fs) / len(fs) for c, fs in groups.items() if fs}
    dists = [float((f - means[int(y)]).norm())
             for f, y in zip(feats, labels) if int(y) != ignore_index]
    present = sorted(means)
    pairs = {(a, b): float((means[a] - means[b]).norm())
             for i, a in enumerate(present) for b in present[i + 1:]}
    intra = sum(dists) / len(dists)
    inter = sum(pairs.values()) / len(pairs)
    closest = min(pairs, key=pairs.get)
    return dict(intra=intra, inter=inter, compactness=intra / inter,
                separability=pairs[closest],
                separability_ratio=pairs[closest] / intra,
                closest_pair=closest)


# (features, labels, C, intra, inter, separability, separability ratio,
# closest pair), by hand.
CLOSED_FORM = [
    # Every feature on its class mean; means at (0, 0) and (3, 4): a gap
    # of 5 over no spread at all.
    ([[0, 0], [0, 0], [3, 4]], [0, 0, 1], 2, 0.0, 5.0, 5.0, math.inf,
     (0, 1)),
    # Means (0, 0) and (10, 0); distances to them 1, 1, 2, 2: ratio
    # 10 / 1.5.
    ([[-1, 0], [1, 0], [10, 2], [10, -2]], [0, 0, 1, 1], 2, 1.5, 10.0,
     10.0, 20 / 3, (0, 1)),
    # Three classes on a line at 0, 3 and 7: pairs 3, 7, 4.
    ([[0, 0], [3, 0], [7, 0]], [0, 1, 2], 3, 0.0, 14 / 3, 3.0, math.inf,
     (0, 1)),
    # Classes 1 and 3 absent; present means at (0, 0) and (0, 6); the four
    # features of class 2 at distance 1 each: intra = 4 / 5, ratio 6 / 0.8.
    ([[0, 0], [0, 5], [0, 7], [1, 6], [-1, 6]], [0, 2, 2, 2, 2], 4, 0.8,
     6.0, 6.0, 7.5, (0, 2)),
    # Three classes, means (0, 0), (4, 0), (0, 8), each a pair of features
    # at distance 2 from it: the closest pair (0, 1) is 4 apart, ratio 2;
    # pairs 4, 8, sqrt(80).
    ([[0, 2], [0, -2], [2, 0], [6, 0], [-2, 8], [2, 8]], [0, 0, 1, 1, 2, 2],
     3, 2.0, (12 + math.sqrt(80)) / 3, 4.0, 2.0, (0, 1)),
]


@pytest.mark.parametrize('feats,labels,C,intra,inter,sep,ratio,pair',
                         CLOSED_FORM)
def test_closed_form_cases(feats, labels, C, intra, inter, sep, ratio, pair):
    out = feature_stats(torch.tensor(feats, dtype=torch.float32),
                        torch.tensor(labels), C, IGNORE)
    assert out['intra'] == pytest.approx(intra, abs=1e-12)
    assert out['inter'] == pytest.approx(inter, abs=1e-12)
    assert out['separability'] == pytest.approx(sep, abs=1e-12)
    assert out['separability_ratio'] == pytest.approx(ratio, rel=1e-12)
    assert out['compactness'] == pytest.approx(intra / inter, abs=1e-12)
    assert out['closest_pair'] == pair
    counts = torch.bincount(torch.tensor(labels), minlength=C)
    assert torch.equal(out['class_counts'], counts)
    absent = counts == 0
    assert torch.isnan(out['class_means'][absent]).all()
    assert torch.isnan(out['class_spread'][absent]).all()


def test_features_on_their_means_give_zero_compactness():
    means = torch.tensor([[1.0, 2.0, 3.0], [-4.0, 0.5, 2.0]])
    labels = torch.tensor([0, 1, 1, 0, 1])
    out = feature_stats(means[labels], labels, 2, IGNORE)
    assert out['compactness'] == 0.0
    assert torch.equal(out['class_means'], means.double())
    assert out['class_spread'].tolist() == [0.0, 0.0]
    assert out['separability'] == float((means[0] - means[1]).double().norm())


@pytest.mark.parametrize('N,D,C,ignore_frac,seed', [(12, 3, 3, 0.0, 0),
                                                    (40, 5, 6, 0.3, 1),
                                                    (25, 2, 8, 0.5, 2)])
def test_matches_loop_reference(N, D, C, ignore_frac, seed):
    g = torch.Generator().manual_seed(seed)
    feats = torch.randn(N, D, generator=g, dtype=torch.float64)
    labels = torch.randint(0, C, (N, ), generator=g)
    labels[torch.rand(N, generator=g) < ignore_frac] = IGNORE
    got = feature_stats(feats, labels, C, IGNORE)
    want = reference_stats(feats, labels, C, IGNORE)
    for key in ('intra', 'inter', 'compactness', 'separability',
                'separability_ratio'):
        assert got[key] == pytest.approx(want[key], rel=1e-12), key
    assert got['closest_pair'] == want['closest_pair']
    for c in range(C):
        own = [float((f - got['class_means'][c]).norm())
               for f, y in zip(feats, labels) if int(y) == c]
        if own:
            assert float(got['class_spread'][c]) == pytest.approx(
                sum(own) / len(own), rel=1e-12)


@pytest.mark.parametrize('ignore_index', [255, -1])
def test_ignored_pixels_take_no_part(ignore_index):
    g = torch.Generator().manual_seed(3)
    feats = torch.randn(30, 4, generator=g)
    labels = torch.randint(0, 3, (30, ), generator=g)
    clean = feature_stats(feats, labels, 3, ignore_index)
    noisy_feats = torch.cat([feats, torch.full((5, 4), 1e6)])
    noisy_labels = torch.cat([labels, torch.full((5, ), ignore_index)])
    noisy = feature_stats(noisy_feats, noisy_labels, 3, ignore_index)
    for key in ('intra', 'inter', 'compactness', 'separability',
                'separability_ratio'):
        assert noisy[key] == clean[key], key
    assert torch.equal(noisy['class_means'], clean['class_means'])
    assert torch.equal(noisy['class_counts'], clean['class_counts'])


def test_fewer_than_two_classes_give_nan_not_errors():
    one = feature_stats(torch.ones(3, 2), torch.tensor([1, 1, IGNORE]), 3,
                        IGNORE)
    assert one['intra'] == 0.0
    assert math.isnan(one['inter']) and math.isnan(one['separability'])
    assert math.isnan(one['compactness']) and one['closest_pair'] is None
    assert math.isnan(one['separability_ratio'])
    none = feature_stats(torch.ones(2, 2), torch.full((2, ), IGNORE), 3,
                         IGNORE)
    assert math.isnan(none['intra']) and math.isnan(none['compactness'])
    assert math.isnan(none['separability_ratio'])
    assert none['class_counts'].tolist() == [0, 0, 0]


def test_coinciding_class_means_give_infinite_compactness():
    out = feature_stats(torch.tensor([[-1.0], [1.0], [0.0]]).repeat(1, 2),
                        torch.tensor([0, 0, 1]), 2, IGNORE)
    assert out['separability'] == 0.0 and out['compactness'] == math.inf
    assert out['separability_ratio'] == 0.0  # a spread, but no gap


def test_one_point_per_class_on_one_spot_gives_nan_ratio():
    out = feature_stats(torch.zeros(2, 2), torch.tensor([0, 1]), 2, IGNORE)
    assert out['separability'] == 0.0 and out['intra'] == 0.0
    assert math.isnan(out['separability_ratio'])


@pytest.mark.parametrize('scale,shift', [(10.0, 0.0), (0.01, 3.0),
                                         (-2.0, -5.0)])
def test_separability_ratio_is_free_of_scale_and_shift(scale, shift):
    g = torch.Generator().manual_seed(4)
    feats = torch.randn(60, 5, generator=g, dtype=torch.float64)
    labels = torch.randint(0, 4, (60, ), generator=g)
    base = feature_stats(feats, labels, 4, IGNORE)
    moved = feature_stats(feats * scale + shift, labels, 4, IGNORE)
    # The raw separability follows the scale; the ratio, like
    # compactness, does not.
    assert moved['separability'] == pytest.approx(
        abs(scale) * base['separability'], rel=1e-10)
    for key in ('separability_ratio', 'compactness'):
        assert moved[key] == pytest.approx(base[key], rel=1e-10), key


@pytest.mark.parametrize('labels', [[0, 3], [-2, 0]])
def test_labels_out_of_range_are_refused(labels):
    with pytest.raises(ValueError, match='must lie in'):
        feature_stats(torch.zeros(2, 2), torch.tensor(labels), 3, IGNORE)


def test_shape_mismatch_is_refused():
    with pytest.raises(ValueError, match='must be \\(N, D\\)'):
        feature_stats(torch.zeros(3, 2), torch.zeros(2, dtype=torch.long), 3)


def test_pca_of_points_on_a_line():
    u = torch.tensor([1.0, 2.0, 2.0], dtype=torch.float64) / 3  # unit
    t = torch.tensor([-2.0, -1.0, 0.0, 1.0, 2.0], dtype=torch.float64)
    feats = 5.0 + t[:, None] * u
    pca = pca_2d(feats)
    # The largest-magnitude entry of u (the first 2/3) is positive: u itself.
    assert torch.allclose(pca.components[0], u, atol=1e-12)
    assert torch.allclose(pca.coords[:, 0], t, atol=1e-12)
    assert torch.allclose(pca.coords[:, 1], torch.zeros(5,
                                                        dtype=torch.float64),
                          atol=1e-12)
    assert torch.allclose(pca.explained,
                          torch.tensor([1.0, 0.0], dtype=torch.float64),
                          atol=1e-12)
    assert torch.allclose(pca.mean, torch.full((3, ), 5.0,
                                               dtype=torch.float64))


def test_pca_matches_svd_and_is_sign_stable():
    g = torch.Generator().manual_seed(0)
    feats = torch.randn(50, 6, generator=g, dtype=torch.float64) * \
        torch.tensor([5.0, 3.0, 1.0, 0.5, 0.2, 0.1], dtype=torch.float64)
    pca = pca_2d(feats)
    centred = feats - feats.mean(dim=0)
    _, s, vh = torch.linalg.svd(centred, full_matrices=False)
    for k in range(2):
        assert torch.allclose(pca.components[k].abs(), vh[k].abs(),
                              atol=1e-10)
    assert torch.allclose(pca.components @ pca.components.t(),
                          torch.eye(2, dtype=torch.float64), atol=1e-12)
    assert torch.allclose(pca.explained, s[:2]**2 / (s**2).sum(),
                          atol=1e-12)
    assert torch.allclose(pca_project(feats, pca), pca.coords, atol=1e-12)
    mirrored = pca_2d(-feats)
    assert torch.allclose(mirrored.components, pca.components, atol=1e-10)
    assert torch.allclose(mirrored.coords, -pca.coords, atol=1e-10)


def test_pca_refuses_one_dimensional_features():
    with pytest.raises(ValueError, match='D >= 2'):
        pca_2d(torch.zeros(4, 1))


def test_plot_returns_a_figure_with_one_series_per_class(tmp_path):
    from matplotlib.figure import Figure
    coords = np.array([[0, 0], [1, 1], [2, 0], [3, 3], [9, 9]], float)
    labels = np.array([0, 0, 2, 2, IGNORE])
    anchors = torch.tensor([[0.5, 0.5], [5, 5], [2.5, 1.5]])
    fig = plot_pca(coords, labels, ['a', 'b', 'c'],
                   [[255, 0, 0], [0, 255, 0], [0, 0, 255]], anchors,
                   title='t')
    assert isinstance(fig, Figure)
    (ax, ) = fig.axes
    # Classes 0 and 2 (b is absent, the ignored pixel is not drawn), anchors.
    sizes = [len(c.get_offsets()) for c in ax.collections]
    assert sizes == [2, 2, 3]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == \
        ['a', 'c', 'semantic anchors']
    assert np.allclose(ax.collections[0].get_facecolor()[0][:3], [1, 0, 0])
    assert ax.get_title() == 't'
    fig.savefig(tmp_path / 'p.png')
    assert (tmp_path / 'p.png').read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'


def test_plot_names_the_stars_and_keeps_the_legend_star_small():
    anchors = np.array([[0.0, 0.0], [1.0, 1.0]])
    fig = plot_pca(np.array([[0, 1], [1, 0]], float), np.array([0, 1]),
                   ['a', 'b'], anchors=anchors, anchors_label='prototypes',
                   point_size=1.0)
    legend = fig.axes[0].get_legend()
    assert [t.get_text() for t in legend.get_texts()] == ['a', 'b',
                                                          'prototypes']
    dots, star = legend.legend_handles[:2], legend.legend_handles[2]
    assert star.get_marker() == '*'
    # The star reads as a symbol, not a blot: at most twice the size of a
    # class's dot and about the size of the legend's text.
    assert star.get_markersize() <= 2 * dots[0].get_markersize()
    assert star.get_markersize() <= 1.2 * legend.get_texts()[0].get_size()
    # The class dots stay visible however small the pixels are drawn.
    assert dots[0].get_markersize() >= 3


@pytest.mark.parametrize('title', [
    'sar_fcn_r18slim-d8_1xb8-3000_digitscenes-lt-64x64.py: decode features,'
    ' PCA',
    'x' * 150,
])
def test_plot_title_fits_the_figure(title):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    fig = plot_pca(np.array([[0, 1], [1, 0]], float), np.array([0, 1]),
                   title=title)
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    ax = fig.axes[0]
    box = ax.title.get_window_extent(canvas.get_renderer())
    assert box.x0 >= 0 and box.x1 <= fig.bbox.width
    assert box.y1 <= fig.bbox.height
    # Nothing of the title is lost: only line breaks were added (for a
    # space, or after a - or _).
    assert ''.join(ax.get_title().split()) == ''.join(title.split())
    assert ax.get_title().count('\n') >= 1


def test_plot_into_given_axes():
    from matplotlib.figure import Figure
    row = Figure(figsize=(8, 4))
    left, right = row.subplots(1, 2)
    got = plot_pca(np.array([[0, 1], [1, 0]], float), np.array([0, 1]),
                   title='right panel', ax=right)
    assert got is row
    assert not left.collections and len(right.collections) == 2
    assert right.get_title() == 'right panel'


def test_plot_without_names_palette_or_anchors():
    fig = plot_pca(torch.zeros(3, 2), torch.tensor([0, 1, 1]))
    (ax, ) = fig.axes
    assert [len(c.get_offsets()) for c in ax.collections] == [1, 2]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == \
        ['class 0', 'class 1']


def test_labels_follow_resize_pad_and_flip():
    gt = torch.tensor([[0, 1], [2, 3]])
    meta = dict(img_shape=(4, 4, 3))
    # Upsampled to 4x4, padded to 4x6 with ignore, every 2nd pixel kept.
    got = labels_at_features(gt, meta, (4, 6), (2, 3), IGNORE)
    assert got.tolist() == [[0, 1, IGNORE], [2, 3, IGNORE]]
    flipped = labels_at_features(gt, dict(meta, flip=True,
                                          flip_direction='horizontal'),
                                 (4, 4), (2, 2), IGNORE)
    assert flipped.tolist() == [[1, 0], [3, 2]]
    same = labels_at_features(gt, dict(img_shape=(2, 2, 3)), (2, 2), (2, 2))
    assert same.tolist() == gt.tolist()


def build_demo(config):
    from mmseg.models import build_segmentor
    torch.manual_seed(0)
    model = build_segmentor(Config.fromfile(config).model)
    return revert_sync_batchnorm(model).eval()


def val_loader(shapes_root, config=DEMO_BASELINE):
    from mmseg.datasets import build_dataloader, build_dataset
    cfg = Config.fromfile(config)
    cfg.data.val.data_root = shapes_root
    dataset = build_dataset(cfg.data.val, dict(test_mode=True))
    return build_dataloader(dataset, samples_per_gpu=1, workers_per_gpu=0,
                            dist=False, shuffle=False,
                            persistent_workers=False)


def test_collected_features_are_what_the_classifier_reads(shapes_root):
    model = build_demo(DEMO_SAR)
    loader = val_loader(shapes_root)
    feats, labels, n = collect_features(model, loader, IGNORE)
    head = inner_decode_head(model)
    assert head is model.decode_head.head
    assert n == len(loader.dataset) == 4
    # Independently: the head's logits at feature size, the labels aligned
    # with them; the classifier applied to the collected features must give
    # the logits of exactly the labelled pixels, in order.
    want_logits, want_labels = [], []
    with torch.no_grad():
        for i, data in enumerate(loader):
            img, meta = data['img'][0], data['img_metas'][0].data[0][0]
            logits = head(model.extract_feat(img))[0]  # (C, h, w)
            gt = torch.from_numpy(loader.dataset.get_gt_seg_map_by_idx(i))
            y = labels_at_features(gt, meta, img.shape[2:],
                                   logits.shape[1:]).flatten()
            keep = y != IGNORE
            want_logits.append(logits.flatten(1).t()[keep])
            want_labels.append(y[keep])
        got_logits = head.conv_seg(feats[:, :, None, None]).flatten(1)
    assert torch.equal(labels, torch.cat(want_labels))
    assert torch.allclose(got_logits, torch.cat(want_logits), atol=1e-5)
    assert feats.shape == (len(labels), head.channels)
    assert (labels != IGNORE).all()


def test_pixel_sample_is_a_uniform_subset_capped_per_class(shapes_root):
    model = build_demo(DEMO_BASELINE)
    loader = val_loader(shapes_root)
    full_f, full_y, _ = collect_features(model, loader, IGNORE)
    f, y, n = collect_features(model, loader, IGNORE,
                               max_pixels_per_class=5, seed=1)
    counts = torch.bincount(full_y, minlength=4)
    assert torch.bincount(y, minlength=4).tolist() == \
        counts.clamp(max=5).tolist()
    # Every sampled row is a row of the full set, with its label.
    for row, label in zip(f, y):
        match = (full_f == row).all(dim=1)
        assert match.any() and (full_y[match] == label).all()
    again = collect_features(model, loader, IGNORE, max_pixels_per_class=5,
                             seed=1)
    assert torch.equal(again[0], f) and torch.equal(again[1], y)
    one = collect_features(model, loader, IGNORE, max_images=1)
    assert one[2] == 1 and 0 < len(one[1]) < len(full_y)
    assert n == 4


def test_semantic_anchors_only_for_sar_models():
    assert semantic_anchors(build_demo(DEMO_BASELINE)) is None
    anchors, initialised = semantic_anchors(build_demo(DEMO_SAR))
    assert anchors.shape == (4, 120) and initialised is False


def test_anchor_source_tells_anchors_from_prototypes():
    from mmseg.models import build_segmentor
    assert anchor_source(build_demo(DEMO_BASELINE)) is None
    assert anchor_source(build_demo(DEMO_SAR)) == 'embedded'
    cfg = Config.fromfile(DEMO_SAR)
    cfg.model.decode_head.sar_loss.anchor_source = 'prototype'
    assert anchor_source(build_segmentor(cfg.model)) == 'prototype'


@pytest.fixture(scope='module')
def sar_checkpoint(tmp_path_factory, shapes_root):
    tmp = tmp_path_factory.mktemp('analysis')
    cfg = write_config(tmp / 'sar.py', DEMO_SAR, shapes_root, iters=2)
    work = str(tmp / 'work')
    run([PY, 'tools/train.py', cfg, '--work-dir', work, '--seed', '0'])
    return tmp, cfg, osp.join(work, 'iter_2.pth')


def analyze(cfg, ckpt, out_dir):
    out = run([PY, 'tools/analyze_features.py', cfg, ckpt, '--out-dir',
               str(out_dir), '--max-images', '2', '--max-pixels-per-class',
               '50', '--device', 'cpu'])
    with open(out_dir / 'features.json') as f:
        return out, json.load(f)


@pytest.fixture(scope='module')
def sar_result(sar_checkpoint):
    tmp, cfg, ckpt = sar_checkpoint
    return analyze(cfg, ckpt, tmp / 'out')


def test_analyze_features_tool_on_a_sar_checkpoint(sar_checkpoint,
                                                   sar_result):
    tmp, cfg, ckpt = sar_checkpoint
    out, res = sar_result
    check_result(res, tmp / 'out', 120)
    initialised = bool(torch.load(ckpt, weights_only=False)['state_dict'][
        'decode_head.sar_loss.initialised'])
    assert res['anchors'] == dict(present=True, initialised=initialised,
                                  marked=initialised, source='embedded')
    assert f'compactness:  {res["compactness"]:.4f}' in out
    assert f'separability: {res["separability"]:.4f}' in out
    assert f'separability ratio: {res["separability_ratio"]:.4f}' in out
    assert '2 images' in out


def test_analyze_features_tool_marks_set_anchors(sar_checkpoint):
    tmp, cfg, ckpt = sar_checkpoint
    checkpoint = torch.load(ckpt, weights_only=False)
    state = checkpoint['state_dict']
    state['decode_head.sar_loss.initialised'] = torch.tensor(True)
    state['decode_head.sar_loss.semantic_anchors'] = torch.rand(4, 120)
    forced = str(tmp / 'forced.pth')
    torch.save(checkpoint, forced)
    out, res = analyze(cfg, forced, tmp / 'forced')
    check_result(res, tmp / 'forced', 120)
    assert res['anchors'] == dict(present=True, initialised=True,
                                  marked=True, source='embedded')
    assert 'semantic anchors (EMA) marked' in out


def test_analyze_features_tool_on_a_plain_checkpoint(sar_checkpoint,
                                                     sar_result, shapes_root):
    from sar.checkpoints import sar_to_plain_state_dict
    tmp, _, ckpt = sar_checkpoint
    checkpoint = torch.load(ckpt, weights_only=False)
    checkpoint['state_dict'] = sar_to_plain_state_dict(
        checkpoint['state_dict'])
    plain = str(tmp / 'plain.pth')
    torch.save(checkpoint, plain)
    cfg = write_config(tmp / 'plain.py', DEMO_BASELINE, shapes_root, iters=2)
    out, res = analyze(cfg, plain, tmp / 'plain')
    check_result(res, tmp / 'plain', 120)
    assert res['anchors'] == dict(present=False, initialised=False,
                                  marked=False, source=None)
    assert 'not a SAR model' in out
    # The exported model is the SAR model at test time: same features.
    for key in ('class_pixels', 'compactness', 'separability',
                'separability_ratio', 'class_spread',
                'pca_explained_variance'):
        assert res[key] == sar_result[1][key], key
