"""YOLACT++ ResNet-50-DCN-FPN, 550x550 (amf-sparseinst Table 10 row "YOLACT++ [1]": 34.1 mask AP, 38.6 FPS).

The official ``yolact_plus_resnet50_config`` (github.com/dbolya/yolact data/config.py) written for mmdet 3.3:
mmdet's YOLACT R-50 (yolact_r50_1xb8-55e_coco.py) with
  * DCNv2 (modulated deformable conv, 1 deformable group) in every block of conv3..conv5
    (official ``resnet50_dcnv2_backbone``: dcn_layers [0, 4, 6, 3], default interval 1: 13 blocks);
  * the official FPN: P6 from P5's output, P7 from P6, ReLU after the P3..P5 output convs;
  * 3 anchor scales per octave (24 x 2^(j/3), j = 0, 1, 2, doubling per level up to 384) x ratios {1, 1/2, 2};
  * the fast mask re-scoring net (8-16-32-64-128, stride 2, + 1x1 to 80), smooth L1 weight 25, masks of
    <= 25 prototype pixels not scored, score x predicted mask IoU at inference.
Training as the official one: 800k iterations at batch 8 on 1 GPU, SGD lr 1e-3 (linear warm-up from 1e-4 over
500 iterations), momentum 0.9, weight decay 5e-4, lr x0.1 at 280k, 600k, 700k, 750k; 550x550 input; ImageNet
R-50 (torchvision's resnet50-19c8e357, the file the official code loads). What differs from the official code,
and every reading, is in bench/models/yolact_plus.md.
"""
_base_ = ['mmdet::yolact/yolact_r50_1xb8-55e_coco.py']
custom_imports = dict(imports=['bench.models'], allow_failed_imports=False)

input_size = 550
model = dict(
    type='YOLACTPlus',
    backbone=dict(
        type='YOLACTPlusResNet',
        dcn=dict(type='DCNv2', deform_groups=1, fallback_on_stride=False),
        stage_with_dcn=(False, True, True, True),
        dcn_interval=1),
    neck=dict(
        _delete_=True,
        type='YOLACTPlusFPN',
        in_channels=[256, 512, 1024, 2048],
        out_channels=256,
        start_level=1,
        add_extra_convs='on_output',
        num_outs=5,
        upsample_cfg=dict(mode='bilinear')),
    bbox_head=dict(
        anchor_generator=dict(scales_per_octave=3)),
    mask_head=dict(
        type='YOLACTPlusProtonet',
        maskiou_channels=(8, 16, 32, 64, 128),
        loss_maskiou_weight=25.0,
        discard_mask_area=25.0,
        rescore=True,
        detach_maskiou_input=False))

max_iters = 800000
train_cfg = dict(_delete_=True, type='IterBasedTrainLoop', max_iters=max_iters, val_interval=max_iters)
param_scheduler = [
    dict(type='LinearLR', start_factor=0.1, by_epoch=False, begin=0, end=500),
    dict(type='MultiStepLR', by_epoch=False, begin=0, end=max_iters,
         milestones=[280000, 600000, 700000, 750000], gamma=0.1)
]
default_hooks = dict(checkpoint=dict(by_epoch=False, interval=100000))
log_processor = dict(by_epoch=False)
auto_scale_lr = dict(enable=False, base_batch_size=8)
