"""Table II row "Baseline + D2S": the baseline (kernel_fpn_r50_1x.py) with each top-down x2 nearest
up-sampling of the FPN replaced by a D2S block (pixel shuffle r=2 + 3x3 depthwise-separable conv,
256 -> 256 channels): "D2S module as upsampling operation and spatial mixing" (Sec. IV-B2).
Nothing else differs from the baseline."""
_base_ = './kernel_fpn_r50_1x.py'

model = dict(neck=dict(upsample='d2s'))
