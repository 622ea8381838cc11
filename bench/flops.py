"""FLOPs of one inference pass: mmengine's FlopAnalyzer (fvcore's jit-trace counter) plus handles for the
ops it cannot see, and the path inference actually runs.

Conventions (fvcore's, kept so that numbers compare with the papers' mmdetection / detectron2 tools):

- one multiply-add counts as one FLOP; element-wise ops, pooling and reductions (``aten::add``,
  ``aten::sigmoid``, ``aten::max_pool2d``, ...) are not counted (fvcore leaves them out on purpose), but
  they are listed per row so that nothing is silently dropped;
- bilinear sampling costs 4 per sampled value (fvcore's ``aten::grid_sampler`` and
  ``aten::upsample_bilinear2d`` handles).

Ops the jit trace cannot look into (``torch.autograd.Function`` s such as mmcv's compiled ops appear as
``prim::PythonOp.<Function>``) count zero unless a handle is registered here:

- ``DeformConv2dFunction`` (mmcv ``DeformConv2d`` / ``DeformConv2dPack``, "DCN", DCNv1): the convolution's
  multiply-adds, exactly those of a plain conv with the same weight and output
  (N x C_out x H_out x W_out x C_in/groups x k_h x k_w), plus the bilinear sampling of the im2col columns,
  4 per sampled value (N x C_in x k_h x k_w x H_out x W_out values). Its offset conv is an ordinary
  ``nn.Conv2d`` (``conv_offset``) and is counted by the standard conv handle.
- ``ModulatedDeformConv2dFunction`` (mmcv ``ModulatedDeformConv2d`` / ``...Pack``, "DCNv2"): the same, plus
  one multiply per sampled value by its modulation mask (5 per sampled value).
- ``MultiScaleDeformableAttnFunction`` (mmcv's deformable attention on CUDA; on the CPU it runs as
  ``grid_sample``, which fvcore counts): 4 per sampled value, the same count on both devices.
- ``aten::baddbmm`` (attention scores with a mask) as ``bmm``; ``aten::scaled_dot_product_attention`` as
  its two matrix products (QK^T and AV).

Which forward is traced:

- ``model.flops_forward(inputs, data_samples)`` where a model defines one (a model's own statement of
  what its inference runs);
- mmdet's tensor mode ``model._forward(inputs, data_samples)`` otherwise, as mmdet 3.3's
  ``tools/analysis_tools/get_flops.py`` traces it (backbone, neck, heads without post-processing; two-stage
  detectors: the box head on all RPN proposals, the mask head on the first 100 RoIs);
- cascade / HTC mask heads (mmdet ``CascadeRoIHead`` / ``HTCRoIHead`` with their own ``forward``): their
  tensor mode runs every stage's mask head on all 1000 proposals, 10x what inference runs (at most
  ``max_per_img`` = 100 detections); bench traces the same forward with the mask heads on the first 100
  refined RoIs, StandardRoIHead's tensor-mode convention (``mask_rois = rois[:100]``);
- the inference path ``model.predict`` for single-stage instance segmentors with a box head (CondInst,
  YOLACT, ...): their tensor mode runs ``bbox_head.loss`` on ground truth to pick the instances the mask
  head sees (mmdet ``single_stage_instance_seg.py``), which is training, and fails without ground truth
  (``'_gt_instances'``). With untrained weights the number of detections is arbitrary, so the score
  threshold is set to 0, NMS keeps every box and no box is too small: the mask branch runs on
  ``max_per_img`` detections (100 in mmdet's configs), the count the tensor mode of two-stage mask heads
  uses.
"""
from __future__ import annotations

import copy
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Optional

# ------------------------------------------------------------------------------------------ handles
BILINEAR = 4  # multiply-adds per bilinearly sampled value (fvcore: grid_sampler, upsample_bilinear2d)


def _shape(v) -> list[int]:
    from mmengine.analysis.jit_handles import get_shape

    s = get_shape(v)
    if s is None:
        raise ValueError(f"no shape for {v}")
    return s


def _deform_conv_count(x: list[int], w: list[int], out: list[int], per_sample: int) -> Counter:
    n, c_in = x[0], x[1]
    c_out, c_in_per_group, kh, kw = w
    h_out, w_out = out[2], out[3]
    conv = n * c_out * c_in_per_group * kh * kw * h_out * w_out
    sampled = n * c_in * kh * kw * h_out * w_out
    return Counter({"deform_conv": conv, "deform_sampling": sampled * per_sample})


def deform_conv_flop_jit(inputs: list, outputs: list) -> Counter:
    """mmcv ``DeformConv2dFunction(input, offset, weight, ...)``: conv multiply-adds + 4 per sampled value."""
    return _deform_conv_count(_shape(inputs[0]), _shape(inputs[2]), _shape(outputs[0]), BILINEAR)


def modulated_deform_conv_flop_jit(inputs: list, outputs: list) -> Counter:
    """mmcv ``ModulatedDeformConv2dFunction(input, offset, mask, weight, bias, ...)``: conv multiply-adds +
    5 per sampled value (bilinear sampling, then the modulation mask)."""
    return _deform_conv_count(_shape(inputs[0]), _shape(inputs[3]), _shape(outputs[0]), BILINEAR + 1)


def ms_deform_attn_flop_jit(inputs: list, outputs: list) -> Counter:
    """mmcv ``MultiScaleDeformableAttnFunction(value, spatial_shapes, level_start_index, sampling_locations,
    attention_weights, im2col_step)`` (the CUDA path of ``MultiScaleDeformableAttention``): 4 per bilinearly
    sampled value, batch x queries x heads x levels x points x head_dim values, which is what the CPU path
    (``multi_scale_deformable_attn_pytorch``: ``grid_sample``) counts; the weighted sum is element-wise."""
    value, loc = _shape(inputs[0]), _shape(inputs[3])
    n = value[3]
    for d in loc[:-1]:
        n *= d
    return Counter({"deform_attn_sampling": n * BILINEAR})


def baddbmm_flop_jit(inputs: list, outputs: list) -> int:
    """``aten::baddbmm(self, batch1, batch2, beta, alpha)``: the batched matrix product's multiply-adds."""
    b, n, c = _shape(inputs[1])
    t = _shape(inputs[2])[-1]
    return b * n * c * t


def sdpa_flop_jit(inputs: list, outputs: list) -> int:
    """``aten::scaled_dot_product_attention(q, k, v, ...)``: QK^T and softmax(.)V multiply-adds."""
    q, k, v = _shape(inputs[0]), _shape(inputs[1]), _shape(inputs[2])
    batch = 1
    for d in q[:-2]:
        batch *= d
    L, E, S, Ev = q[-2], q[-1], k[-2], v[-1]
    return batch * L * S * (E + Ev)


EXTRA_HANDLES = {
    "prim::PythonOp.DeformConv2dFunction": deform_conv_flop_jit,
    "prim::PythonOp.ModulatedDeformConv2dFunction": modulated_deform_conv_flop_jit,
    "prim::PythonOp.MultiScaleDeformableAttnFunction": ms_deform_attn_flop_jit,
    "aten::baddbmm": baddbmm_flop_jit,
    "aten::scaled_dot_product_attention": sdpa_flop_jit,
}

# ops that fvcore's convention leaves out on purpose: element-wise arithmetic and activations, pooling,
# reductions, sorting / selection, tensor creation. Anything not here and not counted is listed as an
# uncounted compute op.
CONVENTION_OPS = {
    "aten::" + n for n in (
        "abs add add_ addcmul all any amax amin argmax argmin avg_pool2d bitwise_and bitwise_or ceil clamp_min "
        "clamp_max cos cumsum div div_ elu erf exp exp_ fill_ gelu hardsigmoid hardswish hardtanh le leaky_relu "
        "leaky_relu_ linspace log log_softmax logical_and logical_not logical_or logsumexp lt max_pool2d maximum "
        "mean meshgrid min minimum mish mul mul_ ne neg nonzero norm pow reciprocal relu relu_ relu6 remainder "
        "round rsqrt rsub sigmoid sigmoid_ sign silu silu_ sin softmax softplus sort sqrt square sub sub_ sum "
        "tanh topk where zero_ argsort clone std var exponential_ uniform_ normal_ bernoulli_ unique_dim "
        "_unique2 masked_select masked_fill_ index_select scatter scatter_ scatter_add scatter_add_ "
        "rand rand_like randn randn_like randperm ones_like ones new_ones new_full new_zeros tril triu "
        "log2 log1p log10 expm1 atan2 pixel_shuffle pixel_unshuffle pad repeat expand_as triu_ tril_ repeat_interleave unbind split_with_sizes lerp isnan isinf flip roll cummax div_floor max_pool1d"
    ).split()}


def split_uncounted(ops: dict[str, int]) -> tuple[dict[str, int], dict[str, int]]:
    """(uncounted compute ops, ops left out by fvcore's convention) of an analyzer's unsupported ops."""
    conv = {k: v for k, v in ops.items() if k in CONVENTION_OPS}
    return {k: v for k, v in ops.items() if k not in conv}, conv


def _fmt(ops: dict[str, int]) -> str:
    return ", ".join(f"{k} x{v}" for k, v in sorted(ops.items()))


# ------------------------------------------------------------------------------------------ forward paths
def _tensor_mode_needs_gt(model) -> bool:
    """mmdet's SingleStageInstanceSegmentor._forward calls bbox_head.loss(x, data_samples) when it has a box
    head (CondInst, YOLACT, BoxInst, ...): ground truth picks the mask head's instances."""
    try:
        from mmdet.models.detectors.single_stage_instance_seg import SingleStageInstanceSegmentor
    except ImportError:  # pragma: no cover - mmdet is a dependency
        return False
    return isinstance(model, SingleStageInstanceSegmentor) and getattr(model, "with_bbox", False)


def _max_detection_cfg(cfg: Any) -> Any:
    """A test_cfg under which post-processing keeps max_per_img boxes: score threshold 0, NMS IoU 1, no
    minimum box size (untrained box regressors on a blank image often predict empty boxes)."""
    if isinstance(cfg, dict):
        out = copy.copy(cfg)
        for k, v in cfg.items():
            if k == "score_thr":
                out[k] = 0.0
            elif k in ("iou_threshold", "iou_thr"):
                out[k] = 1.0
            elif k == "min_bbox_size":
                out[k] = -1
            else:
                out[k] = _max_detection_cfg(v)
        return out
    return cfg


class _MaxDetections:
    """Swaps every submodule's ``test_cfg`` for its max-detection version for the duration of a block."""

    def __init__(self, model):
        self.saved = [(m, m.test_cfg) for m in model.modules() if isinstance(getattr(m, "test_cfg", None), dict)]

    def __enter__(self):
        for m, cfg in self.saved:
            m.test_cfg = _max_detection_cfg(cfg)
        return self

    def __exit__(self, *exc):
        for m, cfg in self.saved:
            m.test_cfg = cfg


MASK_ROIS = 100  # mmdet StandardRoIHead tensor mode: mask_rois = rois[:100]


def _cascade_with_full_mask_rois(model) -> bool:
    """mmdet 3.3's CascadeRoIHead.forward and HTCRoIHead.forward (tensor mode) run every stage's mask head
    on all RPN proposals (1000), where StandardRoIHead's runs its mask head on the first 100 RoIs and
    inference on at most max_per_img (100) detections. True for detectors whose roi_head uses one of those
    two forwards unchanged."""
    try:
        from mmdet.models.roi_heads import CascadeRoIHead
        from mmdet.models.roi_heads import HybridTaskCascadeRoIHead as HTCRoIHead
    except ImportError:  # pragma: no cover
        return False
    roi = getattr(model, "roi_head", None)
    return (roi is not None and getattr(model, "with_rpn", False) and getattr(roi, "with_mask", False)
            and type(roi).forward in (CascadeRoIHead.forward, HTCRoIHead.forward))


def _cascade_forward(model, samples):
    """mmdet's cascade / HTC tensor mode, except that the mask heads see the first MASK_ROIS refined RoIs."""
    import torch
    from mmdet.models.roi_heads import HybridTaskCascadeRoIHead as HTCRoIHead
    from mmdet.structures.bbox import bbox2roi

    roi = model.roi_head
    htc = isinstance(roi, HTCRoIHead)

    def forward(inputs):
        x = model.extract_feat(inputs)
        rpn = model.rpn_head.predict(x, samples, rescale=False)
        metas = [s.metainfo for s in samples]
        proposals = [r.bboxes for r in rpn]
        sem = roi.semantic_head(x)[1] if htc and roi.with_semantic else None
        extra = {"semantic_feat": sem} if htc else {}
        rois, cls_scores, bbox_preds = roi._refine_roi(
            x=x, rois=bbox2roi(proposals), batch_img_metas=metas,
            num_proposals_per_img=tuple(len(p) for p in proposals), **extra)
        mask_rois = torch.cat(rois)[:MASK_ROIS]
        if htc:  # all stages' mask heads with the information flow, as HTC's test-time _mask_forward
            masks = roi._mask_forward(stage=-1, x=x, rois=mask_rois, semantic_feat=sem, training=False)["mask_preds"]
        else:
            masks = [roi._mask_forward(i, x, mask_rois)["mask_preds"] for i in range(roi.num_stages)]
        return tuple(cls_scores) + tuple(bbox_preds) + tuple(masks)

    return forward


def _forward_fn(model, samples):
    """(mode, function(inputs) -> tensors, info dict filled during the call)."""
    import torch

    info: dict[str, Any] = {}
    if callable(getattr(model, "flops_forward", None)):
        return "flops_forward", lambda x: model.flops_forward(x, samples), info
    if _cascade_with_full_mask_rois(model):
        return "cascade-tensor", _cascade_forward(model, samples), info
    if not _tensor_mode_needs_gt(model):
        return "tensor", lambda x: model._forward(x, samples), info

    def predict(x):
        results = model.predict(x, copy.deepcopy(samples), rescale=False)
        out = []
        for r in results:
            inst = r.pred_instances
            info["detections"] = info.get("detections", 0) + len(inst)
            out += [v for k in ("bboxes", "scores", "labels", "masks") if isinstance(v := inst.get(k), torch.Tensor)]
        return tuple(out)

    return "predict", predict, info


MODE_NOTES = {
    "tensor": "mmdet tensor mode (model._forward, as mmdet's get_flops.py; post-processing not traced)",
    "cascade-tensor": (f"mmdet tensor mode with the cascade's mask heads on the first {MASK_ROIS} RoIs (mmdet's "
                       "cascade / HTC tensor mode runs them on all proposals; inference on <= max_per_img "
                       "detections); post-processing not traced"),
    "flops_forward": "the model's own flops_forward (what its inference runs)",
    "predict": ("inference path (model.predict; tensor mode would run bbox_head.loss on ground truth), "
                "score threshold 0, NMS and min box size off so the mask branch runs on max_per_img detections"),
}


# ------------------------------------------------------------------------------------------ measurement
@dataclass
class FlopCount:
    gflops: Optional[float]
    mode: str = ""
    uncounted: dict[str, int] = field(default_factory=dict)     # compute ops with no count (opaque ops)
    convention: dict[str, int] = field(default_factory=dict)    # element-wise etc., left out by convention
    by_operator: dict[str, int] = field(default_factory=dict)
    detections: Optional[int] = None
    error: str = ""

    @property
    def deform_gflops(self) -> float:
        """GFLOPs of mmcv's deformable ops themselves (their offset convs are ordinary convs, not included):
        ``gflops - deform_gflops`` is what a counter without these handles (fvcore, detectron2's tools) gives."""
        return sum(v for k, v in self.by_operator.items() if k.startswith("deform_")) / 1e9

    @property
    def note(self) -> str:
        if self.gflops is None:
            return f"FLOPs not measured: {self.error}"
        parts = [f"mmengine FlopAnalyzer, one multiply-add = one FLOP (fvcore convention), {MODE_NOTES[self.mode]}"]
        if self.detections is not None:
            parts.append(f"{self.detections} detections")
        deform = {k: v for k, v in self.by_operator.items() if k.startswith("deform_")}
        if deform:
            parts.append("deformable convs counted (conv multiply-adds + bilinear sampling, bench/flops.py): "
                         + ", ".join(f"{k} {v / 1e9:.2f} G" for k, v in sorted(deform.items())))
        parts.append(f"uncounted ops: {_fmt(self.uncounted) if self.uncounted else 'none'}")
        if self.convention:
            parts.append(f"not counted by convention (element-wise, pooling, reductions, copies): {_fmt(self.convention)}")
        return "; ".join(parts)


def count_flops(model, data: dict) -> FlopCount:
    """FLOPs of one inference forward of ``model`` on a preprocessed batch ``{'inputs', 'data_samples'}``."""
    import torch
    from mmengine.analysis import FlopAnalyzer

    model.eval()
    try:
        inputs, samples = data["inputs"], data["data_samples"]
        mode, fn, info = _forward_fn(model, samples)

        class _Wrap(torch.nn.Module):
            def __init__(self, m):
                super().__init__()
                self.m = m

            def forward(self, x):
                return fn(x)

        analyzer = FlopAnalyzer(_Wrap(model), (inputs,))
        for name, handle in EXTRA_HANDLES.items():
            analyzer.set_op_handle(name, handle)
        analyzer.unsupported_ops_warnings(False)
        analyzer.uncalled_modules_warnings(False)
        with torch.no_grad():
            if mode == "predict":
                with _MaxDetections(model):
                    total = analyzer.total()
            else:
                total = analyzer.total()
        uncounted, convention = split_uncounted(dict(analyzer.unsupported_ops()))
        return FlopCount(total / 1e9, mode, uncounted, convention, dict(analyzer.by_operator()),
                         detections=info.get("detections"))
    except Exception as e:  # noqa: BLE001 - FLOPs are best effort; say why they are missing
        return FlopCount(None, error=f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")


def measure_flops(model, data: dict) -> tuple[Optional[float], str]:
    """GFLOPs of one inference forward pass on a preprocessed sample, and a note saying how they were
    counted and which ops stay uncounted."""
    c = count_flops(model, data)
    return c.gflops, c.note
