"""PolarMask, ResNet-50-FPN, 1x (csr-d2s Table I row "PolarMask": 29.1 mask AP, 32.09M params).

The paper's two-tower head (classification + polar centerness, 36-ray mask regression; no box branch, paper
Table 1(e)) on FCOS's ResNet-50-FPN P3-P7. Training setup of the official R-50 1x configs
(xieenze/PolarMask configs/polarmask/): SGD lr 0.01 at batch 16 (4 GPUs x 4 images), momentum 0.9, weight
decay 1e-4, bias lr x2 and no bias decay, gradient clip 35, linear warm-up from 1/3 over 500 iterations,
12 epochs with lr x0.1 at 8 and 11, horizontal flip 0.5; the image scale of its 800 config
(32gpu/polar_800_1x_r50.py: 1333x800 without keeping the aspect ratio, padded to a multiple of 128), whose
result is the README's "29.1AP(800)" that Table I prints. Why 800 and not 768, and what differs from the
official code (ImageNet weights from torchvision, pytorch-style ResNet), is in bench/models/polarmask.md.
"""
_base_ = ['mmdet::_base_/datasets/coco_instance.py', 'mmdet::_base_/default_runtime.py']
custom_imports = dict(imports=['bench.models'], allow_failed_imports=False)

model = dict(
    type='PolarMask',
    data_preprocessor=dict(
        type='mmdet.DetDataPreprocessor',
        mean=[123.675, 116.28, 103.53],
        std=[58.395, 57.12, 57.375],
        bgr_to_rgb=True,
        pad_size_divisor=128,
        pad_mask=True),
    backbone=dict(
        type='ResNet',
        depth=50,
        num_stages=4,
        out_indices=(0, 1, 2, 3),
        frozen_stages=1,
        norm_cfg=dict(type='BN', requires_grad=False),
        norm_eval=True,
        style='pytorch',
        init_cfg=dict(type='Pretrained', checkpoint='torchvision://resnet50')),
    neck=dict(
        type='FPN',
        in_channels=[256, 512, 1024, 2048],
        out_channels=256,
        start_level=1,
        add_extra_convs='on_output',  # P6 from P5, as the official extra_convs_on_inputs=False
        num_outs=5,
        relu_before_extra_convs=True),
    bbox_head=dict(
        type='PolarMaskHead',
        num_classes=80,
        in_channels=256,
        feat_channels=256,
        stacked_convs=4,
        num_rays=36,
        strides=[8, 16, 32, 64, 128],
        regress_ranges=((-1, 64), (64, 128), (128, 256), (256, 512), (512, 1e8)),
        center_sampling='mass',
        center_sample_radius=1.5,
        bbox_branch=False,
        centerness_offset=0.5,
        loss_cls=dict(type='mmdet.FocalLoss', use_sigmoid=True, gamma=2.0, alpha=0.25, loss_weight=1.0),
        loss_mask=dict(type='PolarIoULoss', loss_weight=1.0),
        loss_centerness=dict(type='mmdet.CrossEntropyLoss', use_sigmoid=True, loss_weight=1.0),
        norm_cfg=dict(type='GN', num_groups=32, requires_grad=True)),
    train_cfg=dict(),
    test_cfg=dict(nms_pre=1000, score_thr=0.05, nms=dict(type='nms', iou_threshold=0.5), max_per_img=100))

backend_args = None
train_pipeline = [
    dict(type='LoadImageFromFile', backend_args=backend_args),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='Resize', scale=(1333, 800), keep_ratio=False),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackDetInputs')
]
test_pipeline = [
    dict(type='LoadImageFromFile', backend_args=backend_args),
    dict(type='Resize', scale=(1333, 800), keep_ratio=False),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='PackDetInputs', meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor'))
]
train_dataloader = dict(batch_size=4, num_workers=4, dataset=dict(pipeline=train_pipeline))
val_dataloader = dict(dataset=dict(pipeline=test_pipeline))
test_dataloader = val_dataloader

optim_wrapper = dict(
    type='OptimWrapper',
    optimizer=dict(type='SGD', lr=0.01, momentum=0.9, weight_decay=1e-4),
    paramwise_cfg=dict(bias_lr_mult=2., bias_decay_mult=0.),
    clip_grad=dict(max_norm=35, norm_type=2))
max_epochs = 12
train_cfg = dict(type='EpochBasedTrainLoop', max_epochs=max_epochs, val_interval=1)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')
param_scheduler = [
    dict(type='LinearLR', start_factor=1.0 / 3, by_epoch=False, begin=0, end=500),
    dict(type='MultiStepLR', begin=0, end=max_epochs, by_epoch=True, milestones=[8, 11], gamma=0.1)
]
auto_scale_lr = dict(enable=False, base_batch_size=16)
