"""Table II row "Baseline + D2S": D2S fusion (pixel shuffle + depthwise-separable mixing) of the
1x1-reduced C5 with raw C4 / C3, without the CSR gate; KernelClsHead; schedule of Sec. IV-A."""
_base_ = './kernel_csr_d2s_r50_1x.py'

model = dict(neck=dict(use_csr=False))
