"""K-Net, ResNet-50, 1x schedule (paper Table I "K-Net" row: 34.1 mask AP, 37.26M params).

Model as in K-Net's public R-50 instance-segmentation recipe (FPN P2-P5, Semantic-FPN
localisation features at stride 8, 100 kernels, 3 kernel-update stages). Schedule: the CSR-D2S
paper's Sec. IV-A (AdamW lr 1e-4, weight decay 0.05, 12 epochs, steps at 8 and 11, batch 4) plus
the one optimiser setting of K-Net's own 1x schedule that the CSR-D2S paper does not state: the
backbone trains at 0.25 x the lr (K-Net's configs/det/_base_/schedules/schedule_1x.py,
paramwise_cfg custom_keys backbone lr_mult 0.25). It differs from K-Net's recipe in the batch: K-Net
trained 16 images a step (8 GPUs x 2) at the same lr 1e-4, this row trains 4 (2 GPUs x 2).
The CSR-D2S rows share the schedule file without the multiplier (their paper states none).
"""
_base_ = ['./_schedule_adamw_12e.py']

# K-Net's schedule_1x.py: the backbone's lr (and so its weight-decay step) is 0.25 x the base lr
optim_wrapper = dict(paramwise_cfg=dict(custom_keys={'backbone': dict(lr_mult=0.25)}))

num_classes = 80
num_proposals = 100
num_stages = 3
model = dict(
    type='KNet',
    backbone=dict(
        type='ResNet',
        depth=50,
        num_stages=4,
        out_indices=(0, 1, 2, 3),
        frozen_stages=1,
        norm_cfg=dict(type='BN', requires_grad=True),
        norm_eval=True,
        style='pytorch',
        init_cfg=dict(type='Pretrained', checkpoint='torchvision://resnet50')),
    neck=dict(
        type='FPN',
        in_channels=[256, 512, 1024, 2048],
        out_channels=256,
        start_level=0,
        num_outs=4),
    mask_head=dict(
        type='KNetHead',
        num_classes=num_classes,
        in_channels=256,
        num_proposals=num_proposals,
        num_stages=num_stages,
        semantic_fpn=dict(num_levels=4, out_level=1, num_pos_feats=128),
        stage_cfg=dict(
            num_heads=8,
            feedforward_channels=2048,
            num_ffn_fcs=2,
            num_cls_fcs=1,
            num_mask_fcs=1,
            updator_channels=256,
            dropout=0.0),
        mask_upsample_stride=2,
        kernel_init_std=1.0,
        loss_cls=dict(
            type='FocalLoss', use_sigmoid=True, gamma=2.0, alpha=0.25, loss_weight=2.0),
        loss_mask=dict(type='CrossEntropyLoss', use_sigmoid=True, loss_weight=1.0),
        loss_dice=dict(
            type='DiceLoss', use_sigmoid=True, activate=True, naive_dice=False, eps=1e-3,
            loss_weight=4.0),
        loss_seg=dict(
            type='FocalLoss', use_sigmoid=True, gamma=2.0, alpha=0.25, loss_weight=1.0)),
    train_cfg=dict(
        rpn_assigner=dict(
            type='HungarianAssigner',
            match_costs=[
                dict(type='DiceCost', weight=4.0, pred_act=True, naive_dice=False),
                dict(type='CrossEntropyLossCost', weight=1.0, use_sigmoid=True),
            ]),
        assigner=dict(
            type='HungarianAssigner',
            match_costs=[
                dict(type='FocalLossCost', weight=2.0),
                dict(type='DiceCost', weight=4.0, pred_act=True, naive_dice=False),
                dict(type='CrossEntropyLossCost', weight=1.0, use_sigmoid=True),
            ])),
    test_cfg=dict(max_per_img=num_proposals, mask_thr=0.5, score_thr=0.0))
