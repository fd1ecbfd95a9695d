"""Evaluation figures (PNG, matplotlib Agg backend, small and quick).

* ``heatmap_overlays``: per category, one figure with a row per sampled test
  image (normal and defective ones): image | ground truth | anomaly map over
  the image | thresholded prediction (green = ground-truth outline).
  Images are float [H,W,3] in [0,1]; maps are shown on the category's own
  colour scale (min..max of its maps). The prediction threshold is the one
  given, else the category's pixel F1-max threshold on the test maps (a
  visualisation aid only; predict mode uses ``maskjax.eval.threshold``).
* ``roc_pro_curves``: per category, image ROC | pixel ROC | PRO curve (FPR
  axis up to 1, the AUPRO limit marked), from the exact curves of
  ``maskjax.eval.metrics`` (subsampled for drawing).

File names: ``heatmaps_<category>.png`` and ``curves_<category>.png`` with
"/" in category names replaced by "_".
"""
from __future__ import annotations

import os
from typing import Any, Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from maskjax.eval import metrics as metrics_lib  # noqa: E402


def _safe(name: str) -> str:
  return "".join(c if c.isalnum() or c in "-_." else "_" for c in name.replace("/", "_"))


def _groups(n: int, categories: Sequence[str] | None) -> dict[str, np.ndarray]:
  cats = np.asarray(list(categories) if categories is not None else ["all"] * n)
  if cats.size != n:
    raise ValueError(f"{cats.size} category names for {n} images; one per image")
  return {c: np.flatnonzero(cats == c) for c in dict.fromkeys(cats.tolist())}


def _sample(idx: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
  """Up to k indices: half normal, half defective, evenly spread, in order."""
  normal = idx[labels[idx] == 0]
  defect = idx[labels[idx] != 0]
  n_def = min(len(defect), max(k - min(len(normal), k // 2), 0))
  n_norm = min(len(normal), k - n_def)

  def spread(a, m):
    return a[np.linspace(0, len(a) - 1, m).round().astype(int)] if m > 0 else a[:0]

  return np.concatenate([spread(normal, n_norm), spread(defect, n_def)])


def overlay_figure(path: str, images: np.ndarray, masks: np.ndarray, maps: np.ndarray,
                   threshold: float, names: Sequence[str] | None = None,
                   vrange: tuple[float, float] | None = None) -> str:
  """One PNG, a row per image: image | ground truth | map overlay | prediction."""
  n = len(images)
  lo, hi = vrange if vrange is not None else (float(np.min(maps)), float(np.max(maps)))
  fig, axes = plt.subplots(n, 4, figsize=(6.4, 1.7 * n), squeeze=False)
  for r in range(n):
    img = np.clip(np.asarray(images[r], np.float32), 0, 1)
    gt = np.asarray(masks[r]) > 0
    amap = np.asarray(maps[r], np.float32)
    pred = amap >= threshold
    axes[r, 0].imshow(img)
    axes[r, 1].imshow(gt, cmap="gray", vmin=0, vmax=1)
    axes[r, 2].imshow(img)
    axes[r, 2].imshow(amap, cmap="jet", alpha=0.5, vmin=lo, vmax=hi,
                      extent=(-0.5, img.shape[1] - 0.5, img.shape[0] - 0.5, -0.5))
    axes[r, 3].imshow(img)
    axes[r, 3].imshow(np.ma.masked_where(~pred, pred), cmap="autumn", alpha=0.6,
                      extent=(-0.5, img.shape[1] - 0.5, img.shape[0] - 0.5, -0.5))
    if gt.any():
      # pixel-centre coordinates on the image axes (row 0 at the top)
      scale_y, scale_x = img.shape[0] / gt.shape[0], img.shape[1] / gt.shape[1]
      ys = (np.arange(gt.shape[0]) + 0.5) * scale_y - 0.5
      xs = (np.arange(gt.shape[1]) + 0.5) * scale_x - 0.5
      axes[r, 3].contour(xs, ys, gt.astype(np.float32), levels=[0.5], colors="lime",
                         linewidths=0.8)
    axes[r, 0].set_ylabel(names[r] if names is not None else str(r), fontsize=6)
    for c in range(4):
      axes[r, c].set_xticks([])
      axes[r, c].set_yticks([])
  for c, t in enumerate(("image", "ground truth", "anomaly map", f"map >= {threshold:.3g}")):
    axes[0, c].set_title(t, fontsize=7)
  fig.tight_layout(pad=0.3)
  fig.savefig(path, dpi=80)
  plt.close(fig)
  return path


def heatmap_overlays(out_dir: str, images: Any = None, masks: Any = None, maps: Any = None,
                     threshold: float | Mapping[str, float] | None = None,
                     names: Sequence[str] | None = None, *, records: Sequence[Any] | None = None,
                     anomaly_maps: Any = None, image_size: int | None = None,
                     num_per_category: int = 4, categories: Sequence[str] | None = None
                     ) -> list[str]:
  """Overlay PNGs per category; returns their paths.

  Either arrays (images [N,H,W,3] in [0,1], masks [N,H,W], maps [N,H,W],
  optional per-image ``categories`` and ``names``) or ``records`` (test
  `Record`s in the order of ``anomaly_maps``): only the sampled images are
  then read from disk at ``image_size``. ``threshold``: a number, a
  {category: number} dict, or None for each category's pixel F1-max threshold.
  """
  maps = np.asarray(maps if maps is not None else anomaly_maps)
  n = len(maps)
  if records is not None:
    if len(records) != n:
      raise ValueError(f"{len(records)} records for {n} anomaly maps; one per map")
    categories = [r.category for r in records]
    labels = np.asarray([int(r.label) for r in records])
    names = [f"{r.defect}/{os.path.basename(str(r.path))}" for r in records]
  else:
    if images is None:
      raise ValueError("heatmap_overlays needs images (array) or records")
    labels = None if masks is None else np.asarray(masks).reshape(n, -1).max(axis=1)
  size = int(image_size or maps.shape[1])
  os.makedirs(out_dir, exist_ok=True)
  paths = []
  for cat, idx in _groups(n, categories).items():
    if records is not None:
      from maskjax.data import images as images_io
      lab = labels
      pick = _sample(idx, lab, num_per_category)

      def load_mask(i):
        r = records[i]
        if masks is not None:
          return np.asarray(masks[i], np.float32)
        if r.mask_path:
          return images_io.load_mask(r.mask_path, maps.shape[1])
        return np.zeros(maps.shape[1:], np.float32)

      imgs = np.stack([images_io.load_image(records[i].path, size) for i in pick])
      gts = np.stack([load_mask(i) for i in pick])
    else:
      lab = labels if labels is not None else np.zeros(n)
      pick = _sample(idx, lab, num_per_category)
      imgs = np.asarray(images)[pick]
      gts = np.asarray(masks)[pick] if masks is not None else np.zeros(maps[pick].shape)
    if isinstance(threshold, Mapping):
      thr = float(threshold[cat])
    elif threshold is not None:
      thr = float(threshold)
    else:
      thr = _f1_threshold(maps[idx], records, idx, masks)
    cat_maps = maps[idx]
    path = os.path.join(out_dir, f"heatmaps_{_safe(cat)}.png")
    overlay_figure(path, imgs, gts, maps[pick], thr,
                   [names[i] for i in pick] if names is not None else None,
                   vrange=(float(cat_maps.min()), float(cat_maps.max())))
    paths.append(path)
  return paths


def _f1_threshold(cat_maps: np.ndarray, records, idx: np.ndarray, masks) -> float:
  """The category's pixel F1-max threshold, or its 99th map percentile without masks."""
  try:
    if masks is not None:
      gts = np.asarray(masks)[idx]
    elif records is not None:
      from maskjax.data import images as images_io
      gts = np.stack([images_io.load_mask(records[i].mask_path, cat_maps.shape[1])
                      if records[i].mask_path else np.zeros(cat_maps.shape[1:], np.float32)
                      for i in idx])
    else:
      raise metrics_lib.UndefinedMetric("no masks")
    return metrics_lib.f1_max(cat_maps, gts)[1]
  except metrics_lib.UndefinedMetric:
    return float(np.quantile(cat_maps, 0.99))


def _curve_axes(ax, x, y, title, xlabel, ylabel, limit=None):
  x, y = metrics_lib.downsample_curve(x, y)
  ax.plot(x, y, lw=1.2)
  if limit is None:
    ax.plot([0, 1], [0, 1], ls=":", c="gray", lw=0.8)  # chance
  else:
    ax.axvline(limit, ls=":", c="gray", lw=0.8)  # integration limit
  ax.set_xlim(0, 1)
  ax.set_ylim(0, 1.01)
  ax.set_title(title, fontsize=8)
  ax.set_xlabel(xlabel, fontsize=7)
  ax.set_ylabel(ylabel, fontsize=7)
  ax.tick_params(labelsize=6)


def _na(ax, title, reason):
  ax.text(0.5, 0.5, f"n/a\n{reason}", ha="center", va="center", fontsize=6, wrap=True)
  ax.set_title(title, fontsize=8)
  ax.set_xticks([])
  ax.set_yticks([])


def roc_pro_curves(out_dir: str, *, image_scores: Any, anomaly_maps: Any = None,
                   masks: Any = None, image_labels: Any = None,
                   records: Sequence[Any] | None = None,
                   categories: Sequence[str] | None = None,
                   fpr_limit: float = 0.3) -> list[str]:
  """curves_<category>.png (image ROC | pixel ROC | PRO) per category; returns the paths.

  Categories and image labels come from ``records`` when given, else from
  ``categories`` / ``image_labels`` (labels default to "mask has a defect").
  """
  scores = np.asarray(image_scores, np.float64)
  n = scores.size
  if records is not None:
    categories = [r.category for r in records]
    image_labels = [int(r.label) for r in records]
  maps = None if anomaly_maps is None else np.asarray(anomaly_maps)
  gts = None if masks is None else np.asarray(masks)
  if image_labels is None:
    if gts is None:
      raise ValueError("roc_pro_curves needs image_labels, records or masks")
    image_labels = gts.reshape(n, -1).max(axis=1) > 0
  labels = np.asarray(image_labels)
  os.makedirs(out_dir, exist_ok=True)
  paths = []
  for cat, idx in _groups(n, categories).items():
    fig, axes = plt.subplots(1, 3, figsize=(7.5, 2.6))
    try:
      fpr, tpr = metrics_lib.roc_curve(scores[idx], labels[idx])
      auc = metrics_lib.auroc(scores[idx], labels[idx])
      _curve_axes(axes[0], fpr, tpr, f"image ROC (AUROC {100 * auc:.1f})", "FPR", "TPR")
    except metrics_lib.UndefinedMetric as e:
      _na(axes[0], "image ROC", str(e))
    if maps is not None and gts is not None:
      try:
        fpr, tpr = metrics_lib.roc_curve(maps[idx], gts[idx])
        auc = np.trapezoid(tpr, fpr)
        _curve_axes(axes[1], fpr, tpr, f"pixel ROC (AUROC {100 * auc:.1f})", "FPR", "TPR")
        fpr, pro = metrics_lib.pro_curve(maps[idx], gts[idx])
        ap = metrics_lib.partial_area(fpr, pro, fpr_limit) / fpr_limit
        _curve_axes(axes[2], fpr, pro, f"PRO (AUPRO@{fpr_limit:g} {100 * ap:.1f})",
                    "FPR", "PRO", limit=fpr_limit)
      except metrics_lib.UndefinedMetric as e:
        _na(axes[1], "pixel ROC", str(e))
        _na(axes[2], "PRO", str(e))
    else:
      _na(axes[1], "pixel ROC", "no anomaly maps")
      _na(axes[2], "PRO", "no anomaly maps")
    fig.suptitle(cat, fontsize=9)
    fig.tight_layout(pad=0.4)
    path = os.path.join(out_dir, f"curves_{_safe(cat)}.png")
    fig.savefig(path, dpi=80)
    plt.close(fig)
    paths.append(path)
  return paths


def prediction_overlay(path: str, *, image: np.ndarray, anomaly_map: np.ndarray,
                       pixel_threshold: float, title: str) -> str:
  """One PNG per predicted image: the image | its anomaly map in units of the
  calibrated pixel threshold (colour bar; 1 = the threshold, fixed scale 0..2
  so maps of different images compare) | the image with the outline of the
  region above the threshold. Nothing depends on the other images scored."""
  from maskjax import fileio
  m = np.asarray(anomaly_map, np.float32)
  scale = pixel_threshold if pixel_threshold > 0 else max(float(m.max()), 1e-12)
  rel = m / scale
  img = np.clip(np.asarray(image, np.float32), 0, 1)
  if img.shape[:2] != m.shape:
    from PIL import Image
    img = np.asarray(Image.fromarray((img * 255).astype(np.uint8)).resize(
        (m.shape[1], m.shape[0]), Image.BILINEAR), np.float32) / 255.0
  fig, axes = plt.subplots(1, 3, figsize=(11, 3.8))
  axes[0].imshow(img)
  axes[0].set_title("image")
  im = axes[1].imshow(rel, cmap="jet", vmin=0.0, vmax=2.0)
  axes[1].set_title("anomaly map / pixel threshold")
  fig.colorbar(im, ax=axes[1], fraction=0.046, pad=0.04)
  axes[2].imshow(img)
  if np.any(rel > 1.0) and not np.all(rel > 1.0):
    axes[2].contour(rel > 1.0, levels=[0.5], colors="red", linewidths=1.5)
  axes[2].set_title("above the threshold" if np.any(rel > 1.0) else "nothing above the threshold")
  for a in axes:
    a.axis("off")
  fig.suptitle(title, fontsize=10)
  fig.tight_layout()
  with fileio.atomic_open(path, "wb") as f:
    fig.savefig(f, format="png", dpi=80)
  plt.close(fig)
  return path
