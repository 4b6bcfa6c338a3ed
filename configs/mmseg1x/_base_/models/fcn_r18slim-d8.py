# The 0.x demo's model (../../../_base_/models/fcn_r18slim-d8.py: a dilated
# ResNet-18 at half width with mmseg's FCN head) in mmseg 1.x: the same
# dicts, with the normalisation moved from the pipeline into the data
# preprocessor, as mmseg 1.x does; the DigitScenes-LT statistics.
_base_ = ['../../../_base_/models/fcn_r18slim-d8.py']
data_preprocessor = dict(
    type='SegDataPreProcessor',
    mean=[127.5, 127.5, 127.5],
    std=[73.6, 73.6, 73.6],
    bgr_to_rgb=True,
    pad_val=0,
    seg_pad_val=255)
model = dict(data_preprocessor=data_preprocessor)
