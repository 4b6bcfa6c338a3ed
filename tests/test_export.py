"""Checkpoint mapping: SAR -> plain, and the authors' release -> SAR."""
import subprocess
import sys
from collections import OrderedDict

import pytest
import torch

from conftest import ROOT
from sar.export import (is_sar_state_dict, official_to_sar_state_dict,
                        sar_to_plain_state_dict)


def test_sar_to_plain_single_and_cascade():
    t = torch.zeros(1)
    sar = OrderedDict([
        ('backbone.conv.weight', t), ('decode_head.head.conv_seg.weight', t),
        ('decode_head.sar_loss.init_anchors', t),
        ('decode_head.sar_loss.projector.fc1.weight', t),
        ('decode_head.0.conv_seg.weight', t),
        ('decode_head.1.head.conv_seg.bias', t),
        ('decode_head.1.sar_loss.semantic_anchors', t),
        ('auxiliary_head.conv_seg.weight', t)])
    plain = sar_to_plain_state_dict(sar)
    assert list(plain) == [
        'backbone.conv.weight', 'decode_head.conv_seg.weight',
        'decode_head.0.conv_seg.weight', 'decode_head.1.conv_seg.bias',
        'auxiliary_head.conv_seg.weight']
    assert is_sar_state_dict(sar) and not is_sar_state_dict(plain)
    with pytest.raises(ValueError, match='not a SAR state dict'):
        sar_to_plain_state_dict(plain)


def official_state_dict(C=3, D=4, initialised=True):
    """A state dict in the release's layout, with recognisable values."""
    g = torch.Generator().manual_seed(0)

    def r(*shape):
        return torch.randn(*shape, generator=g)

    def bn(prefix):
        return {f'{prefix}.weight': r(D), f'{prefix}.bias': r(D),
                f'{prefix}.running_mean': r(D), f'{prefix}.running_var':
                r(D).abs(), f'{prefix}.num_batches_tracked': torch.tensor(5)}

    sd = OrderedDict()
    sd['backbone.stem.weight'] = r(2, 2)
    sd['random_center'] = r(C, D)
    sd['momentum_center_feat'] = r(C, D)
    sd['update_flag'] = torch.tensor([1.0 if initialised else 0.0])
    sd['projecter_linear.0.weight'] = r(D, D)
    sd['projecter_linear.0.bias'] = r(D)
    sd.update(bn('projecter_linear.1'))
    sd['projecter_linear.3.weight'] = r(D, D)
    sd['projecter_linear.3.bias'] = r(D)
    sd.update(bn('projecter_linear.4'))
    sd['projecter.conv.weight'] = r(D, D, 1, 1)
    sd.update(bn('projecter.bn'))
    sd['decode_head.conv_seg.weight'] = r(C, D, 1, 1)
    sd['decode_head.conv_seg.bias'] = r(C)
    sd['decode_head.convs.0.conv.weight'] = r(D, 6, 1, 1)
    return sd


def test_official_to_sar_maps_every_key():
    src = official_state_dict()
    out = official_to_sar_state_dict(src)
    s = 'decode_head.sar_loss.'
    assert torch.equal(out[s + 'init_anchors'], src['random_center'])
    assert torch.equal(out[s + 'semantic_anchors'],
                       src['momentum_center_feat'])
    assert out[s + 'initialised'].dtype == torch.bool
    assert bool(out[s + 'initialised'])
    assert out[s + 'iters_since_init'].item() == 0
    assert torch.equal(out[s + 'projector.fc1.weight'],
                       src['projecter_linear.0.weight'])
    assert torch.equal(out[s + 'projector.norm2.running_var'],
                       src['projecter_linear.4.running_var'])
    assert torch.equal(out[s + 'projector.proj.weight'],
                       src['projecter.conv.weight'].flatten(1))
    assert torch.equal(out[s + 'projector.norm3.bias'],
                       src['projecter.bn.bias'])
    assert torch.equal(out['decode_head.head.conv_seg.weight'],
                       src['decode_head.conv_seg.weight'])
    assert 'backbone.stem.weight' in out


def test_official_state_loads_into_the_sar_module_strictly():
    from sar.core import SemanticAnchorRegularizer
    C, D = 3, 4
    out = official_to_sar_state_dict(official_state_dict(C, D, False))
    sar = {k[len('decode_head.sar_loss.'):]: v for k, v in out.items()
           if k.startswith('decode_head.sar_loss.')}
    module = SemanticAnchorRegularizer(C, D)
    module.load_state_dict(sar, strict=True)
    assert not module.initialised and module.iters_since_init.item() == -1


def test_official_unknown_keys_are_reported():
    src = official_state_dict()
    src['mystery.weight'] = torch.zeros(1)
    with pytest.raises(ValueError, match='mystery.weight'):
        official_to_sar_state_dict(src)


def test_convert_official_tool_round_trip(tmp_path):
    src = tmp_path / 'theirs.pth'
    torch.save({'state_dict': official_state_dict(), 'meta': {'iter': 3}},
               src)
    out = tmp_path / 'ours.pth'
    tool = f'{ROOT}/tools/convert_official.py'
    run = subprocess.run([sys.executable, tool, str(src), str(out)],
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    got = torch.load(out, weights_only=True)['state_dict']
    assert torch.equal(got['decode_head.sar_loss.init_anchors'],
                       official_state_dict()['random_center'])
    again = subprocess.run([sys.executable, tool, str(src), str(out)],
                           capture_output=True, text=True)
    assert again.returncode != 0 and '--force' in again.stderr
