"""Table II row "Baseline": FPN without modification (mmdet FPN on C3-C5, P3 + up-sampled P4, P5
summed into one 256-channel stride-8 map); KernelClsHead; schedule of Sec. IV-A.

The "+CSR" and "+D2S" rows are this config with ONE neck field changed (``csr`` / ``upsample``);
the head, losses, backbone and schedule are those of the full model (kernel_csr_d2s_r50_1x.py)."""
_base_ = './kernel_csr_d2s_r50_1x.py'

model = dict(
    # no CSR gate (Table II "CSR" column; the "+CSR" row adds neck.csr) and FPN's nearest x2
    # top-down up-sampling (Table II "D2S" column; the "+D2S" row sets upsample='d2s')
    neck=dict(_delete_=True, type='FPNFusionNeck', in_channels=[512, 1024, 2048], out_channels=256,
              upsample='nearest'),
    mask_head=dict(in_channels=256))  # FPN width (the CSR-D2S map keeps C3's 512)
