"""Table II row "Baseline + CSR": the baseline (kernel_fpn_r50_1x.py) with the CSR gate of the full
model (W0: B_i -> 256 per level, W1/W2: 1D convs across the channel axis) reweighting the
256-channel C5 lateral before the FPN's top-down pathway ("adding CSR to the top of the backbone",
Sec. IV-B2). Nothing else differs from the baseline."""
_base_ = './kernel_fpn_r50_1x.py'

model = dict(neck=dict(csr=dict(csr_channels=256, channel_mixing='conv', kernel_size=3)))
