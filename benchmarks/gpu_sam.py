"""Throughput and memory of SAM automatic mask generation: segment-anything's reference
SamAutomaticMaskGenerator against optidel's BatchedMaskGenerator, on the same images.

Made for one run on a lent GPU without internet or weights: the SAM is randomly initialised
(seeded) with the requested architecture. Random weights predict IoUs near 0 and mask logits
of about +-0.3, so the reference's default thresholds would drop every mask and leave nothing
to post-process; unless thresholds are given, they are calibrated on the first image so that
each of the IoU and stability filters keeps about `--survive` of the candidates, as real
weights do, and the stability offset is shrunk to the logits' scale.

Reported: images/s of the reference (fp32, a few images: it is slow), of the batched
generator in float32 on those same images, and in bf16 (on CUDA) on all images; peak device
memory of each (model weights included); masks per image; and the mean best-match mask IoU
of each batched run against the reference.

GPU:  python benchmarks/gpu_sam.py --data DIR_OF_JPGS --json $OUT/gpu_sam.json
CPU smoke test:  python benchmarks/gpu_sam.py --device cpu --model vit_tiny --size 256 \\
    --points-per-side 4 --images 2
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from segment_anything import SamAutomaticMaskGenerator, SamPredictor
from segment_anything.utils.amg import build_point_grid, calculate_stability_score

from optidel.stages.amg_batched import BatchedMaskGenerator
from optidel.stages.sam import build_sam

REPO = Path(__file__).resolve().parents[1]

KVASIR_IMAGES = REPO.parent / "shared" / "datasets" / "kvasir-seg" / "images"
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png"}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="vit_h", choices=["vit_b", "vit_l", "vit_h", "vit_tiny"])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--data", type=Path, default=KVASIR_IMAGES, help="folder of images; synthetic if none")
    parser.add_argument("--images", type=int, default=16, help="images for the batched generator")
    parser.add_argument("--reference-images", type=int, default=3, help="images for the (slow) reference")
    parser.add_argument("--size", type=int, default=1024, help="images are resized to this long side")
    parser.add_argument("--points-per-side", type=int, default=32)
    parser.add_argument("--points-per-batch", type=int, default=256, help="batched generator's prompt batch")
    parser.add_argument("--batch", type=int, default=4, help="images per batched generator call")
    parser.add_argument("--pred-iou-thresh", type=float, help="default: calibrated (see --survive)")
    parser.add_argument("--stability-score-thresh", type=float, help="default: calibrated (see --survive)")
    parser.add_argument("--stability-score-offset", type=float, default=0.05)
    parser.add_argument("--box-nms-thresh", type=float, default=0.7)
    parser.add_argument("--survive", type=float, default=0.4, help="fraction kept by each calibrated filter")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args(argv)
    if args.images < 1 or args.batch < 1 or not 0 < args.survive <= 1:
        parser.error("--images and --batch must be >= 1 and --survive in (0, 1]")
    args.reference_images = max(1, min(args.reference_images, args.images))
    return args


def load_images(folder: Path, count: int, size: int, seed: int) -> tuple[list[np.ndarray], str]:
    """`count` RGB images resized to long side `size` (cycling the folder's images), or
    seeded smooth synthetic ones when the folder holds none."""
    paths = sorted(p for p in folder.glob("*") if p.suffix.lower() in IMAGE_SUFFIXES) if folder.is_dir() else []
    if not paths:
        rng = np.random.default_rng(seed)
        low = [rng.integers(0, 256, (6, 8, 3), dtype=np.uint8) for _ in range(count)]
        height = round(size * 0.75)
        images = [np.asarray(Image.fromarray(x).resize((size, height), Image.Resampling.BILINEAR)) for x in low]
        return images, "synthetic"
    images = []
    for path in (paths[i % len(paths)] for i in range(count)):
        with Image.open(path) as image:
            image = image.convert("RGB")
            scale = size / max(image.size)
            new_size = (round(image.width * scale), round(image.height * scale))
            images.append(np.asarray(image.resize(new_size, Image.Resampling.BILINEAR)))
    return images, str(folder)


@torch.inference_mode()
def calibrate(model, image: np.ndarray, args: argparse.Namespace) -> dict:
    """Thresholds that keep about `args.survive` of this image's candidates per filter,
    computed as the reference does (IoU predictions; stability of full-resolution logits)."""
    predictor = SamPredictor(model)
    predictor.set_image(image)
    points = build_point_grid(args.points_per_side) * np.array(image.shape[:2])[None, ::-1]
    ious, stabilities = [], []
    for start in range(0, len(points), 64):
        coords = predictor.transform.apply_coords(points[start : start + 64], image.shape[:2])
        coords = torch.as_tensor(coords, device=predictor.device)[:, None]
        labels = torch.ones(coords.shape[:2], dtype=torch.int, device=predictor.device)
        logits, iou, _ = predictor.predict_torch(coords, labels, multimask_output=True, return_logits=True)
        ious.append(iou.flatten().float().cpu())
        stabilities.append(
            calculate_stability_score(logits.flatten(0, 1), model.mask_threshold, args.stability_score_offset).cpu()
        )
    quantile = 1.0 - args.survive
    return {
        "pred_iou_thresh": float(torch.quantile(torch.cat(ious), quantile)),
        "stability_score_thresh": float(torch.quantile(torch.cat(stabilities), quantile)),
    }


def best_match_iou(masks_a: list[np.ndarray], masks_b: list[np.ndarray], device: str) -> float:
    """Mean over masks_a of each one's best IoU among masks_b (1.0 when both are empty)."""
    if not masks_a or not masks_b:
        return float(not masks_a and not masks_b)
    a = torch.as_tensor(np.stack(masks_a), device=device).flatten(1).float()
    b = torch.as_tensor(np.stack(masks_b), device=device).flatten(1).float()
    inter = a @ b.T
    union = a.sum(1)[:, None] + b.sum(1)[None, :] - inter
    return float((inter / union.clamp(min=1)).max(dim=1).values.mean())


def timed(device: str, run) -> tuple[list, float, float | None]:
    """(results, seconds, peak device memory in GiB or None on CPU) of run()."""
    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    results = run()
    if cuda:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    return results, seconds, torch.cuda.max_memory_allocated() / 2**30 if cuda else None


def in_batches(generator: BatchedMaskGenerator, images: list[np.ndarray], batch: int) -> list[list[dict]]:
    results = []
    for start in range(0, len(images), batch):
        results.extend(generator.generate_batch(images[start : start + batch]))
    return results


def summary(name: str, results: list[list[dict]], seconds: float, peak: float | None) -> dict:
    return {
        "method": name,
        "images": len(results),
        "seconds": seconds,
        "images_per_s": len(results) / seconds,
        "peak_mem_gib": peak,
        "masks_per_image": float(np.mean([len(r) for r in results])),
    }


def iou_vs_reference(reference: list[list[dict]], results: list[list[dict]], device: str) -> float:
    """Symmetric best-match IoU, averaged over the reference's images (the first of results)."""
    scores = []
    for ref, new in zip(reference, results):
        ref_masks, new_masks = [m["segmentation"] for m in ref], [m["segmentation"] for m in new]
        both_ways = best_match_iou(ref_masks, new_masks, device) + best_match_iou(new_masks, ref_masks, device)
        scores.append(both_ways / 2)
    return float(np.mean(scores))


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    torch.manual_seed(args.seed)
    model = build_sam(args.model, None).to(args.device).eval()
    images, source = load_images(args.data, args.images, args.size, args.seed)
    reference_images = images[: args.reference_images]
    thresholds = {"pred_iou_thresh": args.pred_iou_thresh, "stability_score_thresh": args.stability_score_thresh}
    if None in thresholds.values():
        calibrated = calibrate(model, images[0], args)
        thresholds = {k: v if v is not None else calibrated[k] for k, v in thresholds.items()}
    settings = {
        "points_per_side": args.points_per_side,
        "stability_score_offset": args.stability_score_offset,
        "box_nms_thresh": args.box_nms_thresh,
        **thresholds,
    }

    reference_gen = SamAutomaticMaskGenerator(model, output_mode="binary_mask", **settings)
    fp32_gen = BatchedMaskGenerator(model, points_per_batch=args.points_per_batch, use_bf16=False, **settings)
    fast_gen = BatchedMaskGenerator(model, points_per_batch=args.points_per_batch, **settings)

    reference_gen.generate(images[0])  # warm-ups: kernels, allocator, cuDNN choices
    fp32_gen.generate_batch(images[: args.batch])
    fast_gen.generate_batch(images[: args.batch])

    reference, ref_s, ref_mem = timed(args.device, lambda: [reference_gen.generate(im) for im in reference_images])
    fp32, fp32_s, fp32_mem = timed(args.device, lambda: in_batches(fp32_gen, reference_images, args.batch))
    fast, fast_s, fast_mem = timed(args.device, lambda: in_batches(fast_gen, images, args.batch))

    rows = [
        summary("reference", reference, ref_s, ref_mem),
        summary("batched_fp32", fp32, fp32_s, fp32_mem)
        | {"iou_vs_reference": iou_vs_reference(reference, fp32, args.device)},
        summary("batched_bf16" if fast_gen.bf16 else "batched", fast, fast_s, fast_mem)
        | {"iou_vs_reference": iou_vs_reference(reference, fast, args.device)},
    ]
    result = {
        "device": torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu",
        "torch": torch.__version__,
        "model": args.model,
        "weights": f"random (seed {args.seed})",
        "data": source,
        "size": args.size,
        "points_per_batch": args.points_per_batch,
        "batch": args.batch,
        "settings": settings,
        "results": rows,
        "speedup_fp32": rows[1]["images_per_s"] / rows[0]["images_per_s"],
        "speedup": rows[2]["images_per_s"] / rows[0]["images_per_s"],
    }
    print_table(result)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2))
    return result


def print_table(result: dict) -> None:
    print(f"{result['model']} ({result['weights']}) on {result['device']}, data: {result['data']}")
    print("settings: " + ", ".join(f"{k}={v:.4g}" for k, v in result["settings"].items()))
    print(f"{'method':<14}{'images':>7}{'img/s':>9}{'peak GiB':>10}{'masks/img':>11}{'IoU vs ref':>12}")
    for row in result["results"]:
        peak = f"{row['peak_mem_gib']:.2f}" if row["peak_mem_gib"] is not None else "-"
        iou = f"{row['iou_vs_reference']:.4f}" if "iou_vs_reference" in row else "-"
        print(
            f"{row['method']:<14}{row['images']:>7}{row['images_per_s']:>9.3f}{peak:>10}"
            f"{row['masks_per_image']:>11.1f}{iou:>12}"
        )
    print(f"speed-up over the reference: {result['speedup']:.1f}x (float32 batched: {result['speedup_fp32']:.1f}x)")


if __name__ == "__main__":
    main()
