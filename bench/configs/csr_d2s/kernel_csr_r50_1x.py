"""Table II row "Baseline + CSR": CSR-reweighted C5, FPN-style up-sampling (nearest x2 + 1x1 conv)
instead of D2S, fused with raw C4 / C3 by summation; KernelClsHead; schedule of Sec. IV-A.
"""
_base_ = ['mmdet::_base_/datasets/coco_instance.py', 'mmdet::_base_/default_runtime.py']
custom_imports = dict(imports=['bench.models'], allow_failed_imports=False)

num_classes = 80
model = dict(
    type='KernelSegmentor',
    data_preprocessor=dict(
        type='mmdet.DetDataPreprocessor',  # scoped: builds without a default scope
        mean=[123.675, 116.28, 103.53],
        std=[58.395, 57.12, 57.375],
        bgr_to_rgb=True,
        pad_size_divisor=32,
        pad_mask=True),
    backbone=dict(
        type='ResNet',
        depth=50,
        num_stages=4,
        out_indices=(1, 2, 3),  # C3, C4, C5
        frozen_stages=1,
        norm_cfg=dict(type='BN', requires_grad=True),
        norm_eval=True,
        style='pytorch',
        init_cfg=dict(type='Pretrained', checkpoint='torchvision://resnet50')),
    neck=dict(
        type='CSRD2SNeck',
        in_channels=[512, 1024, 2048],
        top_channels=256,
        csr_channels=256,
        use_csr=True,
        use_d2s=False),
    mask_head=dict(
        type='KernelClsHead',
        num_classes=num_classes,
        in_channels=512,  # the CSR-D2S fused map keeps C3's width
        feat_channels=256,
        num_convs=4,
        num_kernels=100,
        num_groups=4,
        kernel_channels=256,
        mask_upsample_stride=2,
        bg_cls_weight=0.1,  # "no object" weight of the cross-entropy (DETR convention)
        loss_cls=dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=1.0),
        loss_dice=dict(
            type='DiceLoss', use_sigmoid=True, activate=True, naive_dice=True, eps=1.0,
            loss_weight=2.0),
        loss_focal=dict(
            type='FocalLoss', use_sigmoid=True, gamma=2.0, alpha=0.25, loss_weight=3.0)),
    train_cfg=dict(
        assigner=dict(
            type='HungarianAssigner',
            match_costs=[
                dict(type='ClassificationCost', weight=1.0),
                dict(type='DiceCost', weight=2.0, pred_act=True, eps=1.0),
                dict(type='FocalLossCost', weight=3.0, binary_input=True),
            ])),
    test_cfg=dict(max_per_img=100, mask_thr=0.5, score_thr=0.0, use_maskness=True))

# Sec. IV-A: batch 4 = 2 GPUs x 2 images.
train_dataloader = dict(batch_size=2, num_workers=2)
val_evaluator = dict(
    type='CocoMetric',
    ann_file='data/coco/annotations/instances_val2017.json',
    metric=['bbox', 'segm'],
    format_only=False,
    backend_args=None)
test_evaluator = val_evaluator

# Sec. IV-A: AdamW, lr 1e-4, weight decay 0.05; gradient clipping (max-norm 1) and a linear
# warm-up of 1000 iterations follow the K-Net recipe the paper says it follows.
optim_wrapper = dict(
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=1e-4, weight_decay=0.05),
    clip_grad=dict(max_norm=1, norm_type=2))
max_epochs = 12
train_cfg = dict(type='EpochBasedTrainLoop', max_epochs=max_epochs, val_interval=1)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')
param_scheduler = [
    dict(type='LinearLR', start_factor=0.001, by_epoch=False, begin=0, end=1000),
    dict(
        type='MultiStepLR',
        begin=0,
        end=max_epochs,
        by_epoch=True,
        milestones=[8, 11],
        gamma=0.1)
]
auto_scale_lr = dict(enable=False, base_batch_size=4)
