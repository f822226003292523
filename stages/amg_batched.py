"""segment-anything's automatic mask generation, batched for throughput.

Same masks as `SamAutomaticMaskGenerator(output_mode="binary_mask", crop_n_layers=0)`, made
faster: several images go through the image encoder at once, prompts are decoded in large
batches, every filter runs on the device, and only the masks that survive box NMS are
upsampled for output (the reference run-length-encodes every candidate in Python and
deep-copies the encodings at each concatenation). Only the whole-image crop is supported
(no `crop_n_layers`).
"""

from __future__ import annotations

from contextlib import nullcontext

import numpy as np
import torch
from segment_anything.modeling import Sam
from segment_anything.utils.amg import batched_mask_to_box, build_point_grid, calculate_stability_score
from segment_anything.utils.transforms import ResizeLongestSide
from skimage.measure import label
from torchvision.ops import batched_nms

# Low-res mask logits upsampled to full resolution at once while filtering: bounds the
# transient memory (two float32 planes per mask at the original and the padded input size).
UPSAMPLE_CHUNK = 128

# The reference reruns NMS after small-region removal at max(box_nms_thresh, crop_nms_thresh);
# this is its default crop_nms_thresh.
REFERENCE_CROP_NMS_THRESH = 0.7


class BatchedMaskGenerator:
    """Automatic masks for whole images; the arguments mean what they mean for
    segment_anything's SamAutomaticMaskGenerator. `use_bf16` None: bfloat16 autocast for the
    image encoder and mask decoder when the model is on CUDA (filters always run in float32)."""

    def __init__(
        self,
        model: Sam,
        points_per_side: int = 32,
        points_per_batch: int = 64,
        pred_iou_thresh: float = 0.88,
        stability_score_thresh: float = 0.95,
        stability_score_offset: float = 1.0,
        box_nms_thresh: float = 0.7,
        min_mask_region_area: int = 0,
        use_bf16: bool | None = None,
    ) -> None:
        if points_per_side < 1 or points_per_batch < 1:
            raise ValueError(
                f"points_per_side and points_per_batch must be >= 1, got {points_per_side} and {points_per_batch}"
            )
        self.model = model
        self.transform = ResizeLongestSide(model.image_encoder.img_size)
        self.point_grid = build_point_grid(points_per_side)
        self.points_per_batch = points_per_batch
        self.pred_iou_thresh = pred_iou_thresh
        self.stability_score_thresh = stability_score_thresh
        self.stability_score_offset = stability_score_offset
        self.box_nms_thresh = box_nms_thresh
        self.min_mask_region_area = min_mask_region_area
        self.use_bf16 = use_bf16

    def generate(self, image: np.ndarray) -> list[dict]:
        """Mask records for one RGB uint8 (H, W, 3) image."""
        return self.generate_batch([image])[0]

    @torch.inference_mode()
    def generate_batch(self, images: list[np.ndarray]) -> list[list[dict]]:
        """Mask records per image, in the reference's binary_mask format and order
        (decreasing predicted IoU)."""
        for index, image in enumerate(images):
            if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3 or 0 in image.shape:
                raise ValueError(f"image {index}: expected RGB uint8 (H, W, 3), got {image.dtype} {image.shape}")
        if not images:
            return []
        embeddings, input_sizes = self._embed(images)
        return [
            self._records(self._masks_for_image(embeddings[i : i + 1], image.shape[:2], input_sizes[i]))
            for i, image in enumerate(images)
        ]

    @property
    def bf16(self) -> bool:
        """Whether the image encoder and mask decoder run under bfloat16 autocast."""
        return self.use_bf16 if self.use_bf16 is not None else self.model.device.type == "cuda"

    def _autocast(self):
        return torch.autocast(self.model.device.type, dtype=torch.bfloat16) if self.bf16 else nullcontext()

    def _embed(self, images: list[np.ndarray]) -> tuple[torch.Tensor, list[tuple[int, int]]]:
        """Image embeddings, one encoder call for all images (preprocess pads each to square)."""
        device = self.model.device
        resized = [torch.as_tensor(self.transform.apply_image(image), device=device) for image in images]
        batch = torch.cat([self.model.preprocess(x.permute(2, 0, 1)[None]) for x in resized])
        with self._autocast():
            embeddings = self._encode(batch)
        return embeddings.float(), [tuple(x.shape[:2]) for x in resized]

    def _encode(self, batch: torch.Tensor) -> torch.Tensor:
        """ImageEncoderViT.forward with the neck run image by image: its 3x3 convolution gives
        batch-size-dependent rounding on CPU, and an image's masks must not depend on which
        images share its batch. The transformer blocks, nearly all of the work, stay batched."""
        encoder = self.model.image_encoder
        x = encoder.patch_embed(batch)
        if encoder.pos_embed is not None:
            x = x + encoder.pos_embed
        for block in encoder.blocks:
            x = block(x)
        x = x.permute(0, 3, 1, 2)
        return torch.cat([encoder.neck(x[i : i + 1]) for i in range(len(x))])

    def _masks_for_image(self, embedding: torch.Tensor, orig_size: tuple[int, int], input_size: tuple[int, int]):
        """The reference's _process_crop for the whole image: decode, filter, NMS; then the
        survivors' full-resolution masks. The reference's is_box_near_crop_edge filter is
        skipped: with the crop equal to the image it never removes anything."""
        points = self.point_grid * np.array(orig_size)[None, ::-1]
        found = [
            self._decode_and_filter(embedding, batch, orig_size, input_size) for batch in self._point_batches(points)
        ]
        logits, iou_preds, stability, point_coords, boxes = (torch.cat(parts) for parts in zip(*found))
        keep = batched_nms(boxes.float(), iou_preds, torch.zeros_like(iou_preds), iou_threshold=self.box_nms_thresh)
        masks = torch.cat(
            [
                self._upsample(logits[keep[i : i + UPSAMPLE_CHUNK]], input_size, orig_size) > self.model.mask_threshold
                for i in range(0, len(keep), UPSAMPLE_CHUNK)
            ]
            or [torch.zeros((0, *orig_size), dtype=torch.bool)]
        )
        result = {
            "masks": masks.cpu().numpy(),
            "boxes": boxes[keep].cpu().numpy(),
            "iou_preds": iou_preds[keep].cpu().numpy(),
            "stability": stability[keep].cpu().numpy(),
            "points": point_coords[keep].cpu().numpy(),
        }
        if self.min_mask_region_area > 0:
            nms_thresh = max(self.box_nms_thresh, REFERENCE_CROP_NMS_THRESH)
            result = _remove_small_regions(result, self.min_mask_region_area, nms_thresh)
        return result

    def _point_batches(self, points: np.ndarray):
        for start in range(0, len(points), self.points_per_batch):
            yield points[start : start + self.points_per_batch]

    def _decode_and_filter(self, embedding, points, orig_size, input_size):
        """The reference's _process_batch, keeping low-res logits instead of run-length
        encodings: (logits, iou_preds, stability, points, boxes) of the masks that pass."""
        device = self.model.device
        # float64 like the reference's coordinates; the prompt encoder (cheap, position
        # sensitive) stays out of autocast.
        coords = torch.as_tensor(self.transform.apply_coords(points, orig_size), device=device)
        labels = torch.ones(len(points), dtype=torch.int, device=device)
        sparse, dense = self.model.prompt_encoder(points=(coords[:, None], labels[:, None]), boxes=None, masks=None)
        dense_pe = self.model.prompt_encoder.get_dense_pe()
        with self._autocast():
            low_res, iou_preds = self.model.mask_decoder(
                image_embeddings=embedding,
                image_pe=dense_pe,
                sparse_prompt_embeddings=sparse,
                dense_prompt_embeddings=dense,
                multimask_output=True,
            )
        per_point = low_res.shape[1]
        low_res, iou_preds = low_res.flatten(0, 1).float(), iou_preds.flatten(0, 1).float()
        point_coords = torch.as_tensor(points, device=device).repeat_interleave(per_point, dim=0)
        if self.pred_iou_thresh > 0.0:
            keep = iou_preds > self.pred_iou_thresh
            low_res, iou_preds, point_coords = low_res[keep], iou_preds[keep], point_coords[keep]

        stability, boxes = [], []
        for start in range(0, len(low_res), UPSAMPLE_CHUNK):
            logits = self._upsample(low_res[start : start + UPSAMPLE_CHUNK], input_size, orig_size)
            stability.append(calculate_stability_score(logits, self.model.mask_threshold, self.stability_score_offset))
            boxes.append(batched_mask_to_box(logits > self.model.mask_threshold))
        stability = torch.cat(stability) if stability else iou_preds.new_zeros(0)
        boxes = torch.cat(boxes) if boxes else torch.zeros((0, 4), dtype=torch.long, device=device)
        if self.stability_score_thresh > 0.0:
            keep = stability >= self.stability_score_thresh
            low_res, iou_preds, point_coords, stability, boxes = (
                low_res[keep], iou_preds[keep], point_coords[keep], stability[keep], boxes[keep]
            )
        return low_res, iou_preds, stability, point_coords, boxes

    def _upsample(self, low_res: torch.Tensor, input_size, orig_size) -> torch.Tensor:
        """Full-resolution logits (n, H, W), as the reference's predictor computes them."""
        return self.model.postprocess_masks(low_res[:, None], input_size, orig_size)[:, 0]

    def _records(self, result: dict) -> list[dict]:
        height, width = result["masks"].shape[1:]
        records = []
        for mask, box, iou, stability, point in zip(
            result["masks"], result["boxes"], result["iou_preds"], result["stability"], result["points"]
        ):
            x0, y0, x1, y1 = box.tolist()
            records.append(
                {
                    "segmentation": mask,
                    "area": int(mask.sum()),
                    "bbox": [x0, y0, x1 - x0, y1 - y0],
                    "predicted_iou": iou.item(),
                    "point_coords": [point.tolist()],
                    "stability_score": stability.item(),
                    "crop_box": [0, 0, width, height],
                }
            )
        return records



def _remove_small_regions(result: dict, min_area: int, nms_thresh: float) -> dict:
    """The reference's postprocess_small_regions on the kept masks: fill small holes, drop
    small islands, then NMS again preferring masks that needed no change. Uses scikit-image
    (8-connectivity, as the reference's OpenCV call) so that OpenCV is not needed."""
    if len(result["masks"]) == 0:
        return result
    masks, unchanged = [], []
    for mask in result["masks"]:
        mask, holes_changed = _fill_small_components(mask, min_area, holes=True)
        mask, islands_changed = _fill_small_components(mask, min_area, holes=False)
        masks.append(mask)
        unchanged.append(float(not (holes_changed or islands_changed)))
    masks_t = torch.as_tensor(np.stack(masks))
    boxes = batched_mask_to_box(masks_t)
    scores = torch.tensor(unchanged)
    keep = batched_nms(boxes.float(), scores, torch.zeros_like(scores), iou_threshold=nms_thresh).numpy()
    return {
        "masks": masks_t.numpy()[keep],
        "boxes": boxes.numpy()[keep],
        "iou_preds": result["iou_preds"][keep],
        "stability": result["stability"][keep],
        "points": result["points"][keep],
    }


def _fill_small_components(mask: np.ndarray, min_area: int, holes: bool) -> tuple[np.ndarray, bool]:
    """segment_anything.utils.amg.remove_small_regions: (new mask, whether it changed)."""
    regions = label(mask ^ holes, connectivity=2)
    sizes = np.bincount(regions.ravel())[1:]
    small = [i + 1 for i, size in enumerate(sizes) if size < min_area]
    if not small:
        return mask, False
    if holes:
        fill = [0, *small]
    else:
        fill = [i for i in range(1, len(sizes) + 1) if i not in small] or [int(np.argmax(sizes)) + 1]
    return np.isin(regions, fill), True
