"""Table II row "Baseline": FPN without modification (mmdet FPN on C3-C5, P3 + up-sampled P4, P5
summed into one 256-channel stride-8 map); KernelClsHead; schedule of Sec. IV-A."""
_base_ = './kernel_csr_d2s_r50_1x.py'

model = dict(
    neck=dict(_delete_=True, type='FPNFusionNeck', in_channels=[512, 1024, 2048], out_channels=256),
    mask_head=dict(in_channels=256))  # FPN width (the CSR-D2S map keeps C3's 512)
