"""FLOPs (bench/flops.py via bench.job.measure_flops): mmcv's deformable convs are counted, CondInst and
YOLACT are measured on their inference path, uncounted ops are named. Small inputs, real mmcv ops and real
mmdet configs; the expected counts are worked out by hand from the layer shapes."""
import pytest
import torch
from mmengine.config import Config

from bench.job import measure_flops
from bench.resolve import config_file

pytestmark = pytest.mark.filterwarnings("ignore")


class _Only(torch.nn.Module):
    """A module traced through ``_forward`` as mmdet detectors are (works with every version of measure_flops)."""

    def __init__(self, m):
        super().__init__()
        self.m = m

    def _forward(self, x, samples=None):
        return self.m(x)


def _gflops(module, shape) -> tuple[float, str]:
    g, note = measure_flops(_Only(module).eval(), {"inputs": torch.zeros(*shape), "data_samples": None})
    assert g is not None, note
    return g * 1e9, note


# a 3x3 conv, 8 -> 16 channels, stride 2, padding 1, on 1 x 8 x 20 x 24: the output is 10 x 12 = 120 positions
POS = 10 * 12
CONV = 16 * 8 * 3 * 3 * POS           # 138,240 multiply-adds: the plain conv
SAMPLED = 8 * 3 * 3 * POS             # 8,640 bilinearly sampled input values (C_in x k x k per output position)


def test_deform_conv_counts_conv_plus_sampling():
    from mmcv.ops import DeformConv2dPack

    plain, _ = _gflops(torch.nn.Conv2d(8, 16, 3, stride=2, padding=1), (1, 8, 20, 24))
    assert plain == CONV
    dcn, note = _gflops(DeformConv2dPack(8, 16, 3, stride=2, padding=1), (1, 8, 20, 24))
    offset_conv = 2 * 3 * 3 * 8 * 3 * 3 * POS   # conv_offset: 8 -> 18 (x, y per kernel tap) channels, 3x3
    assert dcn == CONV + offset_conv + 4 * SAMPLED   # 4 multiply-adds per bilinear sample
    from bench.flops import count_flops

    c = count_flops(_Only(DeformConv2dPack(8, 16, 3, stride=2, padding=1)),
                    {"inputs": torch.zeros(1, 8, 20, 24), "data_samples": None})
    assert round(c.deform_gflops * 1e9) == CONV + 4 * SAMPLED  # the deformable op alone, without conv_offset
    assert "DeformConv2dFunction" not in note.split("uncounted ops:")[1].split(";")[0]


def test_modulated_deform_conv_counts_conv_sampling_and_mask():
    from mmcv.ops import ModulatedDeformConv2dPack

    dcn, note = _gflops(ModulatedDeformConv2dPack(8, 16, 3, stride=2, padding=1), (1, 8, 20, 24))
    offset_mask_conv = 3 * 3 * 3 * 8 * 3 * 3 * POS   # conv_offset: 8 -> 27 (x, y, mask per kernel tap)
    assert dcn == CONV + offset_mask_conv + 5 * SAMPLED   # bilinear (4) + modulation (1) per sample
    assert "uncounted ops: none" in note


def _backbone(ref: str):
    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules

    register_all_modules()
    cfg = Config.fromfile(str(config_file(ref)))
    cfg.model.backbone.init_cfg = None
    return MODELS.build(cfg.model.backbone)


def test_dcn_resnet50_costs_more_than_plain_by_the_deformable_part():
    """mmdet's Mask R-CNN R-50 with DCN in c3-c5 (conv2 of every bottleneck of stages 2-4 is mmcv's
    DeformConv2dPack, deform_groups 1) against the plain one, backbones only, at 128 x 128. The convs'
    multiply-adds are the same; the DCN backbone adds, per deformable conv, its 3x3 offset conv (C -> 18
    channels) and 4 per sampled value (C x 9 per output position)."""
    dcn, note = _gflops(_backbone("mmdet::dcn/mask-rcnn_r50-dconv-c3-c5_fpn_1x_coco.py"), (1, 3, 96, 96))
    plain, _ = _gflops(_backbone("mmdet::mask_rcnn/mask-rcnn_r50_fpn_1x_coco.py"), (1, 3, 96, 96))
    # stage: (blocks, bottleneck width C, output positions at 96 x 96: stride 8, 16, 32)
    stages = [(4, 128, 12 * 12), (6, 256, 6 * 6), (3, 512, 3 * 3)]
    extra = sum(n * (18 * c * 9 * pos + 4 * c * 9 * pos) for n, c, pos in stages)
    assert extra == 28_283_904
    assert dcn - plain == extra
    assert "Deform" not in note.split("uncounted ops:")[1].split(";")[0]


def _detector(ref: str):
    """An mmdet config's model with a ResNet-18 backbone (the FPN's inputs to match), to keep the test fast."""
    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules

    register_all_modules()
    cfg = Config.fromfile(str(config_file(ref)))
    cfg.model.backbone.update(depth=18, init_cfg=None)
    cfg.model.neck.in_channels = [64, 128, 256, 512][-len(cfg.model.neck.in_channels):]
    return MODELS.build(cfg.model), cfg


def _batch(h, w):
    from mmdet.structures import DetDataSample

    s = DetDataSample(metainfo=dict(img_shape=(h, w), ori_shape=(h, w), pad_shape=(h, w), batch_input_shape=(h, w),
                                    scale_factor=(1.0, 1.0), img_id=0))
    return {"inputs": torch.zeros(1, 3, h, w), "data_samples": [s]}  # no ground truth, as at inference


def test_condinst_measured_on_its_inference_path():
    """CondInst's tensor mode runs bbox_head.loss on ground truth ('_gt_instances' without it): the
    inference path is traced instead, its mask branch on max_per_img detections, so more detections cost
    more; the test_cfg the trace ran under is put back afterwards."""
    from bench.flops import count_flops

    model, cfg = _detector("mmdet::condinst/condinst_r50_fpn_ms-poly-90k_coco_instance.py")
    g, note = measure_flops(model, _batch(64, 96))
    assert g is not None and g > 0, note
    assert "inference path" in note and "100 detections" in note
    assert model.bbox_head.test_cfg.score_thr == cfg.model.test_cfg.score_thr == 0.05
    model.bbox_head.test_cfg.max_per_img = 10
    few = count_flops(model, _batch(64, 96))
    assert few.detections == 10 and 0 < few.gflops < g


def test_yolact_measured_on_its_inference_path():
    model, cfg = _detector("mmdet::yolact/yolact_r50_1xb8-55e_coco.py")
    g, note = measure_flops(model, _batch(64, 64))
    assert g is not None and g > 0, note
    assert "inference path" in note and "100 detections" in note


def test_uncounted_ops_are_split_from_convention_ops():
    from bench.flops import split_uncounted

    uncounted, convention = split_uncounted({"prim::PythonOp.RoIAlignFunction": 4, "aten::add": 3, "aten::sigmoid": 1})
    assert uncounted == {"prim::PythonOp.RoIAlignFunction": 4}
    assert convention == {"aten::add": 3, "aten::sigmoid": 1}


def test_deformable_attention_counts_the_same_on_the_cuda_and_cpu_paths():
    """mmcv's MultiScaleDeformableAttention runs an opaque autograd Function on CUDA and grid_sample on the
    CPU. The Function has no CPU kernel, so a Function of the same name computing mmcv's own pytorch
    reference stands in for it in the trace: both paths count 4 per sampled value."""
    from mmcv.ops.multi_scale_deform_attn import multi_scale_deformable_attn_pytorch

    class MultiScaleDeformableAttnFunction(torch.autograd.Function):
        @staticmethod
        def forward(ctx, value, shapes, start, loc, weights, step):
            return multi_scale_deformable_attn_pytorch(value, shapes, loc, weights)

    bs, heads, dim, queries, points = 1, 2, 4, 3, 4
    shapes = torch.tensor([[4, 5], [2, 3]])
    value = torch.randn(bs, 20 + 6, heads, dim)
    loc = torch.rand(bs, queries, heads, 2, points, 2)
    weights = torch.rand(bs, queries, heads, 2, points)

    class Cpu(torch.nn.Module):
        def forward(self, v):
            return multi_scale_deformable_attn_pytorch(v, shapes, loc, weights)

    class Cuda(torch.nn.Module):
        def forward(self, v):
            return MultiScaleDeformableAttnFunction.apply(v, shapes, torch.tensor([0, 20]), loc, weights, 64)

    sampled = bs * queries * heads * 2 * points * dim   # 2 levels
    cpu, _ = _gflops(Cpu(), value.shape)
    cuda, note = _gflops(Cuda(), value.shape)
    assert cpu == cuda == 4 * sampled
    assert "MultiScaleDeformableAttnFunction" not in note.split("uncounted ops:")[1].split(";")[0]


@pytest.mark.parametrize("ref", ["mmdet::htc/htc_r50_fpn_1x_coco.py",
                                 "mmdet::cascade_rcnn/cascade-mask-rcnn_r50_fpn_1x_coco.py"])
def test_cascade_mask_heads_see_100_rois_not_all_proposals(ref):
    """mmdet's cascade / HTC tensor mode runs every mask head on all RPN proposals; inference runs them on
    at most max_per_img = 100 detections: the FLOPs trace gives them the first 100 RoIs (StandardRoIHead's
    tensor-mode convention) while the box heads keep every proposal."""
    model, _ = _detector(ref)
    box_rois, mask_rois = [], []
    for head in model.roi_head.bbox_head:
        head.register_forward_hook(lambda m, i, o: box_rois.append(i[0].shape[0]))
    for head in model.roi_head.mask_head:
        head.register_forward_hook(lambda m, i, o: mask_rois.append(i[0].shape[0]))
    g, note = measure_flops(model, _batch(128, 160))
    assert g is not None, note
    assert len(box_rois) == 3 and min(box_rois) > 100  # the proposals: more than the mask heads see
    assert mask_rois == [100, 100, 100], mask_rois
    assert "mask heads on the first 100 RoIs" in note
