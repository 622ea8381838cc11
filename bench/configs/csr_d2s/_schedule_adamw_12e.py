"""The data preprocessing and training setup of csr-d2s Sec. IV-A, shared by its models and by its Table I K-Net row:
COCO instance segmentation, batch 4 = 2 GPUs x 2 images, AdamW lr 1e-4, weight decay 0.05, 12 epochs,
lr x0.1 at epochs 8 and 11. The paper states nothing more; gradient clipping (max-norm 1) and a
1000-iteration linear warm-up are taken from K-Net's 1x schedule (the paper's optimiser, lr, weight
decay, epochs and steps are K-Net's). K-Net's backbone lr_mult 0.25 is NOT here: the paper does not
state it, so only the K-Net row (knet_r50_1x.py) adds it, as K-Net's own recipe does."""
_base_ = ['mmdet::_base_/datasets/coco_instance.py', 'mmdet::_base_/default_runtime.py']
custom_imports = dict(imports=['bench.models'], allow_failed_imports=False)

# ImageNet normalisation, images padded to a multiple of 32, masks padded with them (both models)
model = dict(
    data_preprocessor=dict(
        type='mmdet.DetDataPreprocessor',  # scoped: builds without a default scope
        mean=[123.675, 116.28, 103.53],
        std=[58.395, 57.12, 57.375],
        bgr_to_rgb=True,
        pad_size_divisor=32,
        pad_mask=True))

train_dataloader = dict(batch_size=2, num_workers=2)
val_evaluator = dict(
    type='CocoMetric',
    ann_file='data/coco/annotations/instances_val2017.json',
    metric=['bbox', 'segm'],
    format_only=False,
    backend_args=None)
test_evaluator = val_evaluator

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
