"""Pictures of what the units decide on real images: the patches HeatViT's selectors keep at each
stage, and ViTCoD's fixed masks (PNG, written with :mod:`vitaccel.model.png`)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from vitaccel.model.png import write_png

__all__ = ["selector_picture", "mask_picture"]

_SCALE = 4


def _up(img, k=_SCALE):
    return np.repeat(np.repeat(img, k, 0), k, 1)


def selector_picture(model, images, path) -> Path:
    """One row per image: the image, then the patches still alive after each selector stage
    (dropped patches dimmed and tinted red). ``model`` is a heatvit :class:`IntViT`."""
    cfg = model.cfg
    _, stats = model.forward(images)
    rows = []
    gap = np.full((28 * _SCALE, 4, 3), 255, np.uint8)
    for b, img in enumerate(images):
        grey = np.stack([img] * 3, -1).astype(np.float64)
        tiles = [_up(grey).astype(np.uint8)]
        for idx in stats["positions"][b]:
            alive = np.zeros(cfg.patches, bool)
            real = idx[(idx >= 1) & (idx <= cfg.patches)] - 1
            alive[real] = True
            amap = np.kron(alive.reshape(cfg.grid, cfg.grid), np.ones((cfg.patch, cfg.patch)))
            out = grey.copy()
            dead = amap == 0
            out[dead] = out[dead] * 0.25 + np.array([140.0, 0.0, 0.0])
            tiles.append(_up(np.clip(out, 0, 255)).astype(np.uint8))
        row = []
        for t in tiles:
            row += [t, gap]
        rows.append(np.concatenate(row[:-1], 1))
        rows.append(np.full((4, rows[-1].shape[1], 3), 255, np.uint8))
    return write_png(path, np.concatenate(rows[:-1], 0))


def mask_picture(masks, path, theta_d: int | None = None) -> Path:
    """ViTCoD's fixed masks (layers x heads x N x N, True = pruned) as a grid: one tile per
    (layer, head), kept entries white, the dense (global) columns of the unit's compiler blue."""
    m = np.asarray(masks, bool)
    L, H, N, _ = m.shape
    k = 3
    tiles = []
    for layer in range(L):
        row = []
        for h in range(H):
            keep = ~m[layer, h]
            img = np.zeros((N, N, 3), np.uint8)
            img[keep] = 255
            if theta_d is not None:
                glob = keep.sum(0) > theta_d
                img[:, glob] = np.where(keep[:, glob, None], [90, 140, 255], [20, 30, 70])
            row += [_up(img, k), np.full((N * k, 6, 3), 128, np.uint8)]
        tiles.append(np.concatenate(row[:-1], 1))
        tiles.append(np.full((6, tiles[-1].shape[1], 3), 128, np.uint8))
    return write_png(path, np.concatenate(tiles[:-1], 0))
