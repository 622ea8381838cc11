"""CSR-D2S full model (paper Table I "Ours", Table II last row, Table III #channels=256).

ResNet-50 (C3-C5) -> CSRD2SNeck (CSR + D2S) -> KernelClsHead; Eq. 6 losses (1 CE + 2 Dice +
3 focal) with Hungarian matching; schedule of Sec. IV-A: AdamW lr 1e-4, weight decay 0.05,
12 epochs, lr x0.1 at epochs 8 and 11, batch 4 (2 GPUs x 2 images).
Table III rows: override ``model.neck.csr_channels`` (128 / 256 / 512 / 1024).
"""
_base_ = ['./_schedule_adamw_12e.py']

num_classes = 80
model = dict(
    type='KernelSegmentor',
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
        csr_channels=256,  # Table III "#channels"
        csr=dict(channel_mixing='conv', kernel_size=3)),  # W1, W2: 1D convs across the channels
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
