"""CenterMask-Lite, ResNet-50-FPN, 4x (48 epochs), short side 600 (amf-sparseinst Table 10 row "CenterMask [19]":
R-50-FPN, 600, 31.9 FPS, 32.9 mask AP; the cells are the official README's CenterMask-Lite R-50-FPN 48-epoch
test-dev row).

Widths, heads and training setup of the official config that trained that model (youngwanLEE/CenterMask,
configs/centermask/centermask_R_50_FPN_lite_res600_ms_bs16_4x.yaml, with maskrcnn-benchmark's defaults):
FPN 128 channels on C3..C5 with P6/P7 from P5 (R-50-FPN-RETINANET, USE_C5 False); FCOS NUM_CONVS 2, centre
sampling radius 1.5, GIoU, INFERENCE_TH 0.03, NMS 0.6, 1,000 a level, 100 boxes an image to the mask branch
in training, 50 an image at test; mask head CONV_LAYERS (128, 128) with spatial attention, RoIAlign 14x14
(sampling ratio 2) on P3..P5 by the area-based level map; MaskIoU head CONV_LAYERS (128, 128); SGD lr 0.01 at
batch 16, momentum 0.9, weight decay 1e-4 (0 on biases, bias lr x2), constant warm-up x1/3 for 500 iterations,
360,000 iterations with lr x0.1 at 300,000 and 340,000; train short side 580..600 (every integer), long side
<= 1000, test 600 / 1000, padded to 32, horizontal flip 0.5. What differs from the official code is in
bench/models/centermask.md.
"""
_base_ = ['mmdet::_base_/datasets/coco_instance.py', 'mmdet::_base_/default_runtime.py']
custom_imports = dict(imports=['bench.models'], allow_failed_imports=False)

num_classes = 80
model = dict(
    type='CenterMask',
    data_preprocessor=dict(
        type='mmdet.DetDataPreprocessor',
        mean=[123.675, 116.28, 103.53],
        std=[58.395, 57.12, 57.375],
        bgr_to_rgb=True,
        pad_size_divisor=32,
        pad_mask=True),
    backbone=dict(
        type='ResNet',
        depth=50,
        num_stages=4,
        out_indices=(1, 2, 3),
        frozen_stages=1,   # FREEZE_CONV_BODY_AT 2: stem and res2 frozen
        norm_cfg=dict(type='BN', requires_grad=False),   # FrozenBatchNorm2d
        norm_eval=True,
        style='pytorch',
        init_cfg=dict(type='Pretrained', checkpoint='torchvision://resnet50')),
    neck=dict(
        type='FPN',
        in_channels=[512, 1024, 2048],
        out_channels=128,
        start_level=0,
        add_extra_convs='on_output',   # P6 from P5 (USE_C5 False)
        num_outs=5,
        relu_before_extra_convs=True),
    bbox_head=dict(
        type='FCOSHead',
        num_classes=num_classes,
        in_channels=128,
        feat_channels=128,
        stacked_convs=2,
        strides=[8, 16, 32, 64, 128],
        regress_ranges=((-1, 64), (64, 128), (128, 256), (256, 512), (512, 1e8)),
        center_sampling=True,
        center_sample_radius=1.5,
        norm_on_bbox=False,
        centerness_on_reg=True,
        conv_bias=True,        # the official towers' convs keep their bias under GN
        dcn_on_last_conv=False,
        norm_cfg=dict(type='GN', num_groups=32, requires_grad=True),
        loss_cls=dict(type='FocalLoss', use_sigmoid=True, gamma=2.0, alpha=0.25, loss_weight=1.0),
        loss_bbox=dict(type='GIoULoss', loss_weight=1.0),
        loss_centerness=dict(type='CrossEntropyLoss', use_sigmoid=True, loss_weight=1.0)),
    roi_head=dict(
        type='CenterMaskRoIHead',
        mask_roi_extractor=dict(
            type='AdaptiveLevelRoIExtractor',
            k_min=3,
            k_max=5,
            roi_layer=dict(type='RoIAlign', output_size=14, sampling_ratio=2, aligned=False),
            out_channels=128,
            featmap_strides=[8, 16, 32]),
        mask_head=dict(
            type='SAGMaskHead',
            num_convs=2,
            in_channels=128,
            conv_out_channels=128,
            roi_feat_size=14,
            num_classes=num_classes,
            sam_kernel_size=3,
            loss_mask=dict(type='CrossEntropyLoss', use_mask=True, loss_weight=1.0)),
        mask_iou_head=dict(
            type='MaskIoUHead',
            num_convs=2,
            num_fcs=2,
            roi_feat_size=14,
            in_channels=128,
            conv_out_channels=128,
            fc_out_channels=1024,
            num_classes=num_classes,
            loss_iou=dict(type='MSELoss', loss_weight=0.5))),   # l2_loss: 0.5 (p - t)^2, mean over targets > 0
    train_cfg=dict(
        proposal=dict(nms_pre=1000, score_thr=0.03, nms=dict(type='nms', iou_threshold=0.6), max_per_img=100),
        rcnn=dict(
            assigner=dict(type='MaxIoUAssigner', pos_iou_thr=0.5, neg_iou_thr=0.5, min_pos_iou=0.5,
                          match_low_quality=False, ignore_iof_thr=-1),
            sampler=dict(type='PseudoSampler'),   # every positive, no sampling
            mask_size=28,
            mask_thr_binary=0.0)),   # on logits: the official pred_masks > 0 (probability > 0.5)
    test_cfg=dict(
        fcos=dict(nms_pre=1000, min_bbox_size=0, score_thr=0.03, nms=dict(type='nms', iou_threshold=0.6),
                  max_per_img=50),
        rcnn=dict(mask_thr_binary=0.5)))

backend_args = None
train_pipeline = [
    dict(type='LoadImageFromFile', backend_args=backend_args),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='RandomChoiceResize', scales=[(1000, s) for s in range(580, 601)], keep_ratio=True),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackDetInputs')
]
test_pipeline = [
    dict(type='LoadImageFromFile', backend_args=backend_args),
    dict(type='Resize', scale=(1000, 600), keep_ratio=True),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='PackDetInputs', meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor'))
]
train_dataloader = dict(batch_size=2, num_workers=2, sampler=dict(type='InfiniteSampler', shuffle=True),
                        dataset=dict(pipeline=train_pipeline))
val_dataloader = dict(dataset=dict(pipeline=test_pipeline))
test_dataloader = val_dataloader

optim_wrapper = dict(
    type='OptimWrapper',
    optimizer=dict(type='SGD', lr=0.01, momentum=0.9, weight_decay=1e-4),
    paramwise_cfg=dict(bias_lr_mult=2., bias_decay_mult=0.))
max_iters = 360000
train_cfg = dict(type='IterBasedTrainLoop', max_iters=max_iters, val_interval=10000)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')
param_scheduler = [
    dict(type='ConstantLR', factor=1.0 / 3, by_epoch=False, begin=0, end=500),
    dict(type='MultiStepLR', begin=0, end=max_iters, by_epoch=False, milestones=[300000, 340000], gamma=0.1)
]
default_hooks = dict(checkpoint=dict(by_epoch=False, interval=10000))
log_processor = dict(by_epoch=False)
auto_scale_lr = dict(enable=False, base_batch_size=16)
