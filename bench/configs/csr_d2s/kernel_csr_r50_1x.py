"""Table II row "Baseline + CSR": CSR-reweighted C5, FPN-style up-sampling (nearest x2 + 1x1 conv)
instead of D2S, fused with raw C4 / C3 by summation; KernelClsHead; schedule of Sec. IV-A."""
_base_ = './kernel_csr_d2s_r50_1x.py'

model = dict(neck=dict(use_d2s=False))
